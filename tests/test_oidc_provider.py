"""The tests' local OpenID Provider (tests/idp/server.mjs) does what the OIDC tests rely on.

Everything with requests alone: discovery and JWKS, authorization code + PKCE S256 against a redirect URI
nobody serves (the code is read from the Location header), the ID token checked with PyJWT against the
JWKS, wrong passwords, each ID-token tamper mode, group changes, RP-initiated logout.
"""

import base64
import hashlib
import secrets
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
import requests

from tests.oidc_provider import (
    HTTP_TIMEOUT,
    ID_TOKEN_MODES,
    IDP_PASSWORD,
    idp_sign_in,
    idp_sign_out,
    running_oidc_provider,
)

REDIRECT_URI = "http://127.0.0.1:9/test-oidc-provider/callback/"  # port 9: never followed (stop_at)
POST_LOGOUT_URI = "http://127.0.0.1:9/test-oidc-provider/signed-out/"


class NonceMismatch(jwt.InvalidTokenError):
    pass


class AzpMismatch(jwt.InvalidTokenError):
    pass


@pytest.fixture
def op(oidc_provider_clean):
    oidc_provider_clean.add_redirect_uris(REDIRECT_URI, post_logout_redirect_uris=[POST_LOGOUT_URI])
    return oidc_provider_clean


def sign_in(op, session, login="alice@demo.test", password=IDP_PASSWORD, nonce=None):
    """Authorization code + PKCE S256; returns (the final response, the code verifier, the nonce)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    nonce = nonce or secrets.token_urlsafe(16)
    params = {"client_id": op.client_id, "response_type": "code", "scope": "openid email profile groups",
              "redirect_uri": REDIRECT_URI, "state": "the-state", "nonce": nonce,
              "code_challenge": challenge, "code_challenge_method": "S256"}
    url = f"{op.discovery['authorization_endpoint']}?{urlencode(params)}"
    return idp_sign_in(session, url, login, password, stop_at=REDIRECT_URI), verifier, nonce


def code_from(response) -> str:
    assert response.is_redirect and response.headers["Location"].startswith(REDIRECT_URI), (response.status_code, response.text)
    query = parse_qs(urlsplit(response.headers["Location"]).query)
    assert query["state"] == ["the-state"]
    return query["code"][0]


def exchange(op, code, verifier) -> requests.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI, "code_verifier": verifier}
    return requests.post(op.discovery["token_endpoint"], data=data, auth=(op.client_id, op.client_secret), timeout=HTTP_TIMEOUT)


def id_token_for(op, login="alice@demo.test"):
    response, verifier, nonce = sign_in(op, requests.Session(), login)
    tokens = exchange(op, code_from(response), verifier)
    assert tokens.status_code == 200, tokens.text
    return tokens.json(), nonce


def verify_id_token(op, token: str, nonce: str) -> dict:
    """What a relying party checks (OIDC Core 3.1.3.7): PyJWT for signature, iss, aud, exp; then nonce and azp."""
    jwks = requests.get(op.discovery["jwks_uri"], timeout=HTTP_TIMEOUT).json()
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(jwt.PyJWK(k) for k in jwks["keys"] if k["kid"] == kid)
    claims = jwt.decode(token, key, algorithms=["RS256"], audience=op.client_id, issuer=op.issuer,
                        options={"require": ["iss", "aud", "exp", "iat", "sub"]})
    if claims.get("nonce") != nonce:
        raise NonceMismatch("nonce does not match the one sent")
    if isinstance(claims["aud"], list) and len(claims["aud"]) > 1 and claims.get("azp") != op.client_id:
        raise AzpMismatch("azp is not this client")
    return claims


def test_discovery_and_jwks(oidc_provider):
    d = oidc_provider.discovery
    assert d["issuer"] == oidc_provider.issuer
    assert d["code_challenge_methods_supported"] == ["S256"]
    assert {"openid", "email", "profile", "groups"} <= set(d["scopes_supported"])
    assert {"email", "groups", "preferred_username", "name"} <= set(d["claims_supported"])
    assert d["end_session_endpoint"] == f"{oidc_provider.issuer}/session/end"
    keys = requests.get(d["jwks_uri"], timeout=HTTP_TIMEOUT).json()["keys"]
    private = oidc_provider.private_jwk
    assert [(k["kid"], k["n"], k["e"], k["alg"]) for k in keys] == [(private["kid"], private["n"], private["e"], "RS256")]
    assert all("d" not in k for k in keys)  # the public half only


def test_code_flow_with_pkce(op):
    session = requests.Session()
    response, verifier, nonce = sign_in(op, session)
    assert [r.status_code for r in response.history] == [303, 200, 303]  # to the form, the form, back to /auth
    assert parse_qs(urlsplit(response.headers["Location"]).query)["iss"] == [op.issuer]
    code = code_from(response)
    tokens = exchange(op, code, verifier)
    assert tokens.status_code == 200, tokens.text
    claims = verify_id_token(op, tokens.json()["id_token"], nonce)
    assert claims["iss"] == op.issuer and claims["aud"] == op.client_id and claims["nonce"] == nonce
    assert claims["sub"] == "alice" and claims["email"] == "alice@demo.test"
    assert claims["groups"] == ["clusterra-admins", "clusterra-users"]
    assert claims["preferred_username"] == "alice" and claims["name"] == "Alice Admin"
    userinfo = requests.get(op.discovery["userinfo_endpoint"], timeout=HTTP_TIMEOUT,
                            headers={"Authorization": f"Bearer {tokens.json()['access_token']}"})
    assert userinfo.json()["groups"] == claims["groups"]
    assert exchange(op, code, verifier).json()["error"] == "invalid_grant"  # a code is used once

    # Signed in at the OP: the next authorization needs no form; a wrong verifier gets no tokens.
    again, _verifier, _nonce = sign_in(op, session, password="not-asked")
    assert exchange(op, code_from(again), secrets.token_urlsafe(48)).json()["error"] == "invalid_grant"

    # PKCE is required.
    params = {"client_id": op.client_id, "response_type": "code", "scope": "openid", "redirect_uri": REDIRECT_URI}
    no_pkce = requests.get(op.discovery["authorization_endpoint"], params=params, allow_redirects=False, timeout=HTTP_TIMEOUT)
    assert "requires PKCE" in parse_qs(urlsplit(no_pkce.headers["Location"]).query)["error_description"][0]


def test_wrong_password(op):
    response, _verifier, _nonce = sign_in(op, requests.Session(), password="wrong-password")
    assert response.status_code == 401
    assert "Invalid credentials" in response.text and 'name="password"' in response.text
    unknown, _verifier, _nonce = sign_in(op, requests.Session(), login="nobody@example.test")
    assert unknown.status_code == 401


@pytest.mark.parametrize(("mode", "error"), [
    ("forged", jwt.InvalidSignatureError),
    ("wrong-aud", jwt.InvalidAudienceError),
    ("wrong-iss", jwt.InvalidIssuerError),
    ("expired", jwt.ExpiredSignatureError),
    ("wrong-nonce", NonceMismatch),
    ("wrong-azp", AzpMismatch),
])
def test_tampered_id_token(op, mode, error):
    op.next_id_token(mode)
    tokens, nonce = id_token_for(op)
    header = jwt.get_unverified_header(tokens["id_token"])
    assert header["kid"] == op.private_jwk["kid"]  # forged too: only the key differs
    with pytest.raises(error):
        verify_id_token(op, tokens["id_token"], nonce)
    if mode == "wrong-azp":
        claims = jwt.decode(tokens["id_token"], options={"verify_signature": False})
        assert claims["aud"] == [op.client_id, "another-client"] and claims["azp"] == "another-client"
    # One shot: the next token is sound again.
    tokens, nonce = id_token_for(op)
    assert verify_id_token(op, tokens["id_token"], nonce)["email"] == "alice@demo.test"


def test_tamper_modes_are_checked(oidc_provider):
    assert set(ID_TOKEN_MODES) == {"forged", "wrong-aud", "wrong-iss", "expired", "wrong-nonce", "wrong-azp"}
    bad = requests.post(f"{oidc_provider.issuer}/__test__/next-id-token", json={"mode": "typo"}, timeout=HTTP_TIMEOUT)
    assert bad.status_code == 400


def test_tokens_signed_with_the_private_jwk_verify(op):
    """Tests can mint tokens the provider would sign."""
    key = jwt.PyJWK(op.private_jwk)
    token = jwt.encode({"iss": op.issuer, "aud": op.client_id, "sub": "alice"}, key.key, algorithm="RS256",
                       headers={"kid": op.private_jwk["kid"]})
    jwks = requests.get(op.discovery["jwks_uri"], timeout=HTTP_TIMEOUT).json()
    assert jwt.decode(token, jwt.PyJWK(jwks["keys"][0]), algorithms=["RS256"], audience=op.client_id)["sub"] == "alice"


def test_groups_change_at_next_sign_in(op):
    tokens, nonce = id_token_for(op, "bob@demo.test")
    assert verify_id_token(op, tokens["id_token"], nonce)["groups"] == ["clusterra-users"]
    op.set_user_groups("bob@demo.test", ["clusterra-admins"])
    tokens, nonce = id_token_for(op, "bob@demo.test")
    assert verify_id_token(op, tokens["id_token"], nonce)["groups"] == ["clusterra-admins"]
    op.reset()
    tokens, nonce = id_token_for(op, "bob@demo.test")
    assert verify_id_token(op, tokens["id_token"], nonce)["groups"] == ["clusterra-users"]
    for login, groups in [("dave@example.test", []), ("eve@example.test", ["unknown-group"])]:
        tokens, nonce = id_token_for(op, login)
        assert verify_id_token(op, tokens["id_token"], nonce)["groups"] == groups


def test_redirect_uris_are_exact_and_can_be_added(op):
    late = "http://127.0.0.1:9/added-later/callback/"
    params = {"client_id": op.client_id, "response_type": "code", "scope": "openid", "redirect_uri": late,
              "code_challenge": "x" * 43, "code_challenge_method": "S256"}
    refused = requests.get(op.discovery["authorization_endpoint"], params=params, allow_redirects=False, timeout=HTTP_TIMEOUT)
    assert refused.status_code == 400 and "redirect_uri did not match" in refused.text
    op.add_redirect_uris(late)
    allowed = requests.get(op.discovery["authorization_endpoint"], params=params, allow_redirects=False, timeout=HTTP_TIMEOUT)
    assert allowed.status_code == 303 and "/interaction/" in allowed.headers["Location"]


def test_rp_initiated_logout(op):
    session = requests.Session()
    response, verifier, _nonce = sign_in(op, session)
    id_token = exchange(op, code_from(response), verifier).json()["id_token"]
    params = {"id_token_hint": id_token, "post_logout_redirect_uri": POST_LOGOUT_URI, "state": "bye"}
    page = session.get(op.discovery["end_session_endpoint"], params=params, timeout=HTTP_TIMEOUT)
    assert page.status_code == 200 and "op.logoutForm" in page.text and ".submit()" in page.text  # auto-submits
    done = idp_sign_out(session, page, stop_at=POST_LOGOUT_URI)
    assert done.status_code == 303 and done.headers["Location"] == f"{POST_LOGOUT_URI}?state=bye"
    again, _verifier, _nonce = sign_in(op, session, password="wrong-password")
    assert again.status_code == 401  # signed out: the form is back


@pytest.mark.slow
def test_a_provider_of_its_own_stops_cleanly(tmp_path):
    users = [{"sub": "zed", "email": "zed@example.test", "password": IDP_PASSWORD, "groups": ["g"], "tenant": "t1"}]
    with running_oidc_provider(tmp_path, redirect_uris=[REDIRECT_URI], users=users, host="localhost") as own:
        assert own.issuer.startswith("http://localhost:")
        tokens, nonce = id_token_for(own, "zed@example.test")
        claims = verify_id_token(own, tokens["id_token"], nonce)
        assert claims["iss"] == own.issuer and claims["groups"] == ["g"] and claims["tenant"] == "t1"
    assert own.proc.returncode == 0
    assert "listening http://localhost:" in own.log_path.read_text()
