"""The portal as an OIDC issuer for AWS, and per-user STS credentials (accounts/issuer.py, clusters/aws.py).

AWS is moto (`mock_aws`) or botocore's Stubber. moto's STS accepts any web-identity token, so every
token the portal sends is verified here, with PyJWT, against the JWKS the portal serves.
Every test also checks that no token, secret key or session token reached the log.
"""

import logging
import re
import socket
import threading
import time
from datetime import timedelta

import jwt
import pytest
from botocore.exceptions import ConnectTimeoutError, ParamValidationError
from botocore.stub import Stubber
from django.core.management import call_command
from moto import mock_aws

from accounts import issuer
from accounts.models import SigningKey
from audit.models import AuditEvent
from clusters import aws
from clusters.models import Cluster, ClusterAccount
from clusters.services import configure_polling, ensure_cluster, map_account

pytestmark = pytest.mark.django_db

ISSUER = "https://portal.example.test"
REGION = "us-east-1"
ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/ClusterraShell"
INSTANCE = "i-0123456789abcdef0"
JWT_LIKE = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+")


@pytest.fixture
def secrets_seen():
    """Tokens and keys a test handled; none may appear in the captured log."""
    return []


@pytest.fixture(autouse=True)
def _aws_test_settings(settings, caplog, secrets_seen):
    settings.AWS_ISSUER_URL = ISSUER
    settings.AWS_MAX_ATTEMPTS = 1
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # the cast, quickly
    aws.forget_credentials()
    caplog.set_level(logging.DEBUG)
    yield
    aws.forget_credentials()
    # caplog.text would only hold the teardown phase here: read the records of setup and call.
    text = "\n".join(caplog.handler.format(r) for when in ("setup", "call") for r in caplog.get_records(when))
    assert not JWT_LIKE.search(text), "a JWT reached the log"
    for secret in secrets_seen:
        assert secret not in text, "a token or key reached the log"


@pytest.fixture
def ssm(cast):
    cluster = ensure_cluster(tenant=cast.acme, slug="aws", name="Acme on AWS", backend="ssm",
                             backend_settings={"region": REGION, "instance_id": INSTANCE, "role_arn": ROLE})
    cast.aws_cluster = cluster
    cast.bob_aws = map_account(cluster=cluster, user=cast.bob, posix_username="bob", uid=5001)
    cast.rita_aws = map_account(cluster=cluster, user=cast.rita, posix_username="rita", uid=5002, state="suspended")
    return cast


def _jwks_from_endpoint(client) -> jwt.PyJWKSet:
    response = client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    return jwt.PyJWKSet.from_dict(response.json())


def _verify(client, token: str, *, audience="sts.amazonaws.com") -> dict:
    """What AWS does with the token: find the key by kid in the published JWKS and check it all."""
    kid = jwt.get_unverified_header(token)["kid"]
    key = _jwks_from_endpoint(client)[kid]
    return jwt.decode(token, key=key.key, algorithms=["RS256"], audience=audience, issuer=ISSUER,
                      options={"require": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti"]})


# --- discovery and JWKS ---------------------------------------------------------------------------------


def test_discovery_document_needs_no_sign_in(client):
    response = client.get("/.well-known/openid-configuration")
    assert response.status_code == 200
    assert "max-age=" in response["Cache-Control"] and "public" in response["Cache-Control"]
    doc = response.json()
    assert doc["issuer"] == ISSUER
    assert doc["jwks_uri"] == f"{ISSUER}/.well-known/jwks.json"
    assert doc["response_types_supported"] == ["id_token"]
    assert doc["subject_types_supported"] == ["public"]
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert {"sub", "aud", "email", "https://aws.amazon.com/tags"} <= set(doc["claims_supported"])
    assert client.post("/.well-known/openid-configuration").status_code == 405


def test_jwks_has_public_keys_only_and_a_key_exists_on_first_use(client):
    assert not SigningKey.objects.exists()
    response = client.get("/.well-known/jwks.json")
    assert response.status_code == 200 and "max-age=" in response["Cache-Control"]
    [key] = response.json()["keys"]
    assert key["kty"] == "RSA" and key["use"] == "sig" and key["alg"] == "RS256" and key["kid"]
    assert set(key) == {"kty", "n", "e", "kid", "use", "alg"}  # no d, p, q, dp, dq, qi
    stored = SigningKey.objects.get()
    assert stored.kid == key["kid"] and "PRIVATE KEY" not in stored.private_key_encrypted
    assert AuditEvent.objects.filter(action="signing_key.create").count() == 1


def test_minted_token_verifies_against_the_published_jwks(client, secrets_seen):
    token = issuer.mint_aws_token(subject="tenant-1-user-2", email="bob@acme.test", run_as="bob", audience="sts.amazonaws.com")
    secrets_seen.append(token)
    claims = _verify(client, token)
    assert claims["sub"] == "tenant-1-user-2" and claims["email"] == "bob@acme.test"
    assert claims["exp"] - claims["iat"] == 300 and claims["nbf"] <= claims["iat"]
    assert re.fullmatch(r"[0-9a-f]{32}", claims["jti"])
    assert claims["https://aws.amazon.com/tags"] == {
        "principal_tags": {"SSMSessionRunAs": ["bob"]},
        "transitive_tag_keys": ["SSMSessionRunAs"],
    }
    assert jwt.get_unverified_header(token)["kid"] == SigningKey.objects.get(active=True).kid
    with pytest.raises(jwt.InvalidAudienceError):
        _verify(client, token, audience="someone-else")


def test_expired_token_is_rejected(client, monkeypatch, secrets_seen):
    real = time.time
    monkeypatch.setattr(issuer.time, "time", lambda: real() - 3600)
    token = issuer.mint_aws_token(subject="tenant-1-user-2", email="bob@acme.test", run_as="bob", audience="sts.amazonaws.com")
    secrets_seen.append(token)
    monkeypatch.setattr(issuer.time, "time", real)
    with pytest.raises(jwt.ExpiredSignatureError):
        _verify(client, token)


def test_rotation_keeps_old_keys_published_until_their_tokens_expire(client, secrets_seen):
    old = issuer.mint_aws_token(subject="tenant-1-user-2", email="", run_as="bob", audience="sts.amazonaws.com")
    old_kid = jwt.get_unverified_header(old)["kid"]
    new_key = issuer.rotate_signing_key(reason="test")
    new = issuer.mint_aws_token(subject="tenant-1-user-2", email="", run_as="bob", audience="sts.amazonaws.com")
    secrets_seen.extend([old, new])
    assert jwt.get_unverified_header(new)["kid"] == new_key.kid != old_kid
    published = {k["kid"] for k in client.get("/.well-known/jwks.json").json()["keys"]}
    assert published == {old_kid, new_key.kid}
    _verify(client, old)  # still verifies after the rotation
    _verify(client, new)
    retired = SigningKey.objects.get(kid=old_kid)
    assert not retired.active and retired.expires_at - retired.retired_at >= timedelta(seconds=300)
    event = AuditEvent.objects.get(action="signing_key.rotate")
    assert event.data["retired"] == [old_kid] and event.data["kid"] == new_key.kid

    # Once its tokens have expired (plus the margin) the old key leaves the JWKS; the next rotation deletes it.
    SigningKey.objects.filter(kid=old_kid).update(expires_at=retired.retired_at)
    assert {k["kid"] for k in client.get("/.well-known/jwks.json").json()["keys"]} == {new_key.kid}
    issuer.rotate_signing_key(reason="test")
    assert not SigningKey.objects.filter(kid=old_kid).exists()
    assert SigningKey.objects.filter(active=True).count() == 1


def test_rotation_when_due_and_the_command(settings):
    assert issuer.rotate_signing_key_if_due() is not None  # no key yet
    assert issuer.rotate_signing_key_if_due() is None
    SigningKey.objects.update(created_at=SigningKey.objects.get().created_at - timedelta(days=settings.SIGNING_KEY_ROTATION_DAYS + 1))
    assert issuer.rotate_signing_key_if_due() is not None
    from io import StringIO

    out = StringIO()
    call_command("rotate_signing_key", stdout=out)
    assert "New signing key" in out.getvalue() and SigningKey.objects.filter(active=True).count() == 1
    out = StringIO()
    call_command("rotate_signing_key", "--if-due", stdout=out)
    assert "Not due" in out.getvalue()
    from accounts.tasks import rotate_signing_key_if_due

    assert rotate_signing_key_if_due() is None
    assert "rotate-signing-key" in settings.CELERY_BEAT_SCHEDULE


def test_a_key_encrypted_under_another_secret_key_is_replaced_but_stays_published(client, settings, secrets_seen):
    first, _ = issuer.active_signing_key()
    issuer._key_cache.clear()
    settings.SECRET_KEY = "another-secret-key-that-is-long-enough-0123456789"
    token = issuer.mint_aws_token(subject="tenant-1-user-2", email="", run_as="bob", audience="sts.amazonaws.com")
    secrets_seen.append(token)
    assert jwt.get_unverified_header(token)["kid"] != first.kid
    assert first.kid in {k["kid"] for k in client.get("/.well-known/jwks.json").json()["keys"]}


@pytest.mark.parametrize("kwargs, message", [
    ({"run_as": "root"}, "never be root"),
    ({"run_as": "Bob Smith"}, "not a valid POSIX user name"),
    ({"run_as": "-rf"}, "not a valid POSIX user name"),
    ({"subject": "x"}, "subject"),
    ({"subject": "user 1"}, "subject"),
    ({"subject": "u" * 65}, "subject"),
    ({"audience": ""}, "audience"),
    ({"audience": "a b"}, "audience"),
    ({"email": "not-an-email"}, "email"),
])
def test_mint_refuses_bad_input(kwargs, message):
    args = {"subject": "tenant-1-user-2", "email": "bob@acme.test", "run_as": "bob", "audience": "sts.amazonaws.com", **kwargs}
    with pytest.raises(issuer.TokenError, match=message):
        issuer.mint_aws_token(**args)


def test_session_tag_limits():
    with pytest.raises(issuer.TokenError, match="At most 50"):
        issuer.session_tags_claim({f"k{i}": "v" for i in range(51)})
    with pytest.raises(issuer.TokenError, match="key"):
        issuer.session_tags_claim({"k" * 129: "v"})
    with pytest.raises(issuer.TokenError, match="aws:"):
        issuer.session_tags_claim({"aws:foo": "v"})
    with pytest.raises(issuer.TokenError, match="value"):
        issuer.session_tags_claim({"k": "v" * 257})
    with pytest.raises(issuer.TokenError, match="Transitive"):
        issuer.session_tags_claim({"k": "v"}, transitive=["other"])
    assert issuer.session_tags_claim({"k": "v" * 256}) == {"principal_tags": {"k": ["v" * 256]}, "transitive_tag_keys": []}


# --- cluster settings -----------------------------------------------------------------------------------


def _cluster(backend_settings, backend="ssm"):
    return Cluster(slug="hpc", name="HPC", backend=backend, backend_settings=backend_settings)


def test_ssm_settings_defaults():
    s = aws.ssm_settings(_cluster({"region": REGION, "instance_id": INSTANCE, "role_arn": ROLE}))
    assert (s.document_name, s.token_source, s.audience, s.endpoint_url, s.s3_bucket) == ("Clusterra-Shell", "portal", "sts.amazonaws.com", "", "")
    assert s.account_id == ACCOUNT and s.partition == "aws" and s.role_name == "ClusterraShell"
    assert s.instance_arn() == f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/{INSTANCE}"
    assert s.document_arn() == f"arn:aws:ssm:{REGION}:{ACCOUNT}:document/Clusterra-Shell"
    assert s.duration == 3600
    full = aws.ssm_settings(_cluster({
        "region": "eu-west-2", "instance_id": "mi-0123456789abcdef0", "role_arn": "arn:aws-cn:iam::210987654321:role/path/R",
        "document_name": "Hpc-Shell", "s3_bucket": "logs.example", "s3_prefix": "/hpc/", "kms_key_id": "alias/ssm",
        "token_source": "idp", "endpoint_url": "http://127.0.0.1:5000/", "endpoint_urls": {"kms": "https://kms.example"},
        "sts_endpoint_url": "https://sts.eu-west-2.amazonaws.com", "audience": "my-aud", "session_duration": 7200,
    }))
    assert full.instance_arn() == "arn:aws-cn:ssm:eu-west-2:210987654321:managed-instance/mi-0123456789abcdef0"
    assert full.s3_prefix == "hpc/" and full.endpoint_for("ssm") == "http://127.0.0.1:5000"
    assert full.endpoint_for("kms") == "https://kms.example" and full.endpoint_for("sts") == "https://sts.eu-west-2.amazonaws.com"
    assert full.duration == 7200 and full.role_name == "R"


BASE = {"region": REGION, "instance_id": INSTANCE, "role_arn": ROLE}


@pytest.mark.parametrize("change, key", [
    ({"region": None}, "region"),
    ({"region": "US East"}, "region"),
    ({"instance_id": None}, "instance_id"),
    ({"instance_id": "i-123"}, "instance_id"),
    ({"instance_id": "i-0123456789ABCDEF0"}, "instance_id"),
    ({"role_arn": None}, "role_arn"),
    ({"role_arn": "arn:aws:iam::123:role/x"}, "role_arn"),
    ({"role_arn": "arn:aws:iam::123456789012:user/x"}, "role_arn"),
    ({"document_name": "a b"}, "document_name"),
    ({"s3_bucket": "Bad_Bucket"}, "s3_bucket"),
    ({"s3_prefix": "logs"}, "s3_prefix"),
    ({"s3_bucket": "logs", "s3_prefix": "a/../b"}, "s3_prefix"),
    ({"kms_key_id": "my key"}, "kms_key_id"),
    ({"token_source": "cognito"}, "token_source"),
    ({"endpoint_url": "ftp://x"}, "endpoint_url"),
    ({"sts_endpoint_url": "https://u:p@sts"}, "sts_endpoint_url"),
    ({"endpoint_urls": {"sts": "https://x"}}, "endpoint_urls"),
    ({"endpoint_urls": ["x"]}, "endpoint_urls"),
    ({"audience": "a b"}, "audience"),
    ({"session_duration": 60}, "session_duration"),
    ({"region": 5}, "region"),
])
def test_ssm_settings_errors_name_the_key(change, key):
    raw = {**BASE, **change}
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(aws.AwsError, match=f"'{re.escape(key)}'") as info:
        aws.ssm_settings(_cluster(raw))
    assert info.value.code == "InvalidClusterSettings"


def test_ssm_settings_refuses_unknown_keys_and_other_backends():
    with pytest.raises(aws.AwsError, match="Unknown cluster setting.*'regoin'"):
        aws.ssm_settings(_cluster({**BASE, "regoin": "x"}))
    with pytest.raises(aws.AwsError, match="does not use the SSM backend"):
        aws.ssm_settings(_cluster(BASE, backend="local"))
    with pytest.raises(aws.AwsError, match="JSON object"):
        aws.ssm_settings(_cluster(["x"]))


# --- STS through moto --------------------------------------------------------------------------------


@pytest.fixture
def sts_calls(monkeypatch, secrets_seen):
    """Every AssumeRoleWithWebIdentity request the portal makes (its parameters, token included)."""
    calls = []
    real = aws._sts_client

    def capture(params, **kwargs):
        calls.append(dict(params))
        secrets_seen.append(params["WebIdentityToken"])

    def client(s):
        sts = real(s)
        sts.meta.events.register("before-parameter-build.sts.AssumeRoleWithWebIdentity", capture)
        return sts

    monkeypatch.setattr(aws, "_sts_client", client)
    return calls


def test_sts_through_moto_with_a_token_aws_could_verify(ssm, client, sts_calls, secrets_seen, caplog):
    subject = f"tenant-{ssm.acme.pk}-user-{ssm.bob.pk}"
    with mock_aws():
        sts = aws.account_client(ssm.bob_aws, "sts")
        identity = sts.get_caller_identity()
        creds = aws.get_credentials(aws.ssm_settings(ssm.aws_cluster), subject=subject, email="", run_as="bob")
    secrets_seen.extend([creds.secret_key, creds.session_token])
    assert identity["Arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/ClusterraShell/{subject}"
    [call] = sts_calls
    assert call["RoleArn"] == ROLE and call["RoleSessionName"] == subject and call["DurationSeconds"] == 3600
    # moto accepts any token: check it the way IAM's OIDC provider would.
    claims = _verify(client, call["WebIdentityToken"])
    assert claims["sub"] == subject and claims["email"] == "bob@acme.test"
    assert claims["https://aws.amazon.com/tags"]["principal_tags"] == {"SSMSessionRunAs": ["bob"]}
    assert "bob@acme.test" not in subject and re.fullmatch(r"[\w+=,.@-]{2,64}", subject)
    assert creds.secret_key not in repr(creds) and creds.session_token not in repr(creds)
    assert f"subject={subject} role={ROLE} source=portal run_as=bob: ok in" in caplog.text


def test_credentials_are_cached_until_the_refresh_margin(ssm, sts_calls, monkeypatch, settings):
    with mock_aws():
        first = aws.account_client(ssm.bob_aws, "ssm")
        assert aws.account_client(ssm.bob_aws, "ssm") is first
        aws.account_client(ssm.bob_aws, "sts")  # another service, same credentials
        assert len(sts_calls) == 1

        # Within the margin before expiry: fetched again.
        real_now = aws._utcnow
        expires_in = aws._cache[(ROLE, sts_calls[0]["RoleSessionName"], "bob")].expiration - real_now()
        later = expires_in - timedelta(seconds=settings.AWS_CREDENTIAL_REFRESH_MARGIN - 10)
        monkeypatch.setattr(aws, "_utcnow", lambda: real_now() + later)
        aws.account_client(ssm.bob_aws, "ssm")
        assert len(sts_calls) == 2
        monkeypatch.setattr(aws, "_utcnow", real_now)

        # Revocation drops them.
        assert aws.forget_credentials(sts_calls[0]["RoleSessionName"]) == 1
        aws.account_client(ssm.bob_aws, "ssm")
        assert len(sts_calls) == 3


def test_concurrent_callers_share_one_sts_call(ssm, sts_calls, monkeypatch):
    s = aws.ssm_settings(ssm.aws_cluster)
    subject = f"tenant-{ssm.acme.pk}-user-{ssm.bob.pk}"
    # The database work (the signing key) stays in this thread: the test's transaction is not visible to others.
    token = issuer.mint_aws_token(subject=subject, email="bob@acme.test", run_as="bob", audience=s.audience)
    monkeypatch.setattr(aws, "mint_aws_token", lambda **kwargs: token)
    results, errors = [], []

    def worker():
        try:
            results.append(aws.get_credentials(s, subject=subject, email="bob@acme.test", run_as="bob"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    with mock_aws():
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == [] and len(sts_calls) == 1
    assert len(results) == 8 and all(r is results[0] for r in results)


def test_poller_uses_a_portal_token_with_its_own_subject(ssm, client, sts_calls):
    configure_polling(ssm.aws_cluster, posix_username="slurmpoll", uid=5050)
    ssm.aws_cluster.backend_settings = {**ssm.aws_cluster.backend_settings, "token_source": "idp"}
    with mock_aws():
        aws.poller_client(ssm.aws_cluster, "slurmpoll", "ssm")
    [call] = sts_calls
    assert call["RoleSessionName"] == f"cluster-{ssm.aws_cluster.pk}-poller"
    claims = _verify(client, call["WebIdentityToken"])
    assert "email" not in claims and claims["https://aws.amazon.com/tags"]["principal_tags"] == {"SSMSessionRunAs": ["slurmpoll"]}


def test_inactive_account_gets_no_credentials(ssm, sts_calls):
    with pytest.raises(aws.AwsError, match="suspended"):
        aws.account_client(ClusterAccount.objects.get(pk=ssm.rita_aws.pk), "ssm")
    assert sts_calls == []


def test_idp_token_source(ssm, sts_calls, secrets_seen):
    ssm.aws_cluster.backend_settings = {**ssm.aws_cluster.backend_settings, "token_source": "idp"}
    ssm.aws_cluster.save()
    account = ClusterAccount.objects.select_related("cluster__tenant", "user").get(pk=ssm.bob_aws.pk)
    with pytest.raises(aws.AwsError, match="sign in again through your identity provider"):
        aws.account_client(account, "ssm")
    idp_key = "an-idp-signing-secret-of-32-bytes!!"
    untagged = jwt.encode({"sub": "idp-user", "exp": int(time.time()) + 300}, idp_key, algorithm="HS256")
    expired = jwt.encode({"sub": "idp-user", "exp": int(time.time()) - 5}, idp_key, algorithm="HS256")
    good = jwt.encode({"sub": "idp-user", "exp": int(time.time()) + 300,
                       "https://aws.amazon.com/tags": {"principal_tags": {"SSMSessionRunAs": ["bob"]}}}, idp_key, algorithm="HS256")
    secrets_seen.extend([untagged, expired, good])
    with pytest.raises(aws.AwsError, match="SSMSessionRunAs") as info:
        aws.account_client(account, "ssm", id_token=untagged)
    assert untagged not in str(info.value)
    with pytest.raises(aws.AwsError, match="expired"):
        aws.account_client(account, "ssm", id_token=expired)
    with pytest.raises(aws.AwsError, match="not a JWT"):
        aws.account_client(account, "ssm", id_token="garbage")
    assert sts_calls == []
    with mock_aws():
        aws.account_client(account, "ssm", id_token=good)
    [call] = sts_calls
    assert call["WebIdentityToken"] == good and call["RoleSessionName"] == f"tenant-{ssm.acme.pk}-user-{ssm.bob.pk}"


# --- error mapping: Stubber and real connection failures ------------------------------------------------------


def _stubbed_sts(monkeypatch, s):
    sts = aws._sts_client(s)
    stubber = Stubber(sts)
    stubber.activate()
    monkeypatch.setattr(aws, "_sts_client", lambda _s: sts)
    return stubber


@pytest.mark.parametrize("code, words", [
    ("ExpiredTokenException", "expired"),
    ("AccessDenied", "trust policy"),
    ("InvalidIdentityToken", "OIDC identity provider"),
    ("IDPRejectedClaim", "sts:TagSession"),
    ("IDPCommunicationError", "jwks.json"),
    ("ThrottlingException", "throttling"),
    ("RegionDisabledException", "not activated"),
])
def test_sts_errors_name_the_cause_without_the_token(ssm, monkeypatch, code, words, caplog, secrets_seen):
    s = aws.ssm_settings(ssm.aws_cluster)
    stubber = _stubbed_sts(monkeypatch, s)
    sent = []
    stubber.client.meta.events.register("before-parameter-build.sts.AssumeRoleWithWebIdentity",
                                        lambda params, **kw: sent.append(params["WebIdentityToken"]))
    # AWS's own message, made to quote a token, to show it is scrubbed too.
    stubber.add_client_error("assume_role_with_web_identity", service_error_code=code, http_status_code=400,
                             service_message="Request refused for token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl")
    with pytest.raises(aws.AwsError) as info:
        aws.account_client(ssm.bob_aws, "ssm")
    secrets_seen.extend(sent)
    error = info.value
    assert words.lower() in str(error).lower() and error.code == code and error.action == "AssumeRoleWithWebIdentity"
    assert sent and sent[0] not in str(error) and sent[0] not in error.detail
    assert "eyJ" not in error.detail and "[redacted token]" in error.detail
    assert f"failed {code}" in caplog.text and "subject=tenant-" in caplog.text and ROLE in caplog.text
    stubber.assert_no_pending_responses()


def test_sts_duration_beyond_the_roles_maximum(ssm, monkeypatch):
    stubber = _stubbed_sts(monkeypatch, aws.ssm_settings(ssm.aws_cluster))
    stubber.add_client_error("assume_role_with_web_identity", service_error_code="ValidationError", http_status_code=400,
                             service_message="The requested DurationSeconds exceeds the MaxSessionDuration set for this role.")
    with pytest.raises(aws.AwsError, match="MaxSessionDuration"):
        aws.account_client(ssm.bob_aws, "ssm")


def test_stubbed_success_is_cached(ssm, monkeypatch, secrets_seen):
    stubber = _stubbed_sts(monkeypatch, aws.ssm_settings(ssm.aws_cluster))
    from datetime import UTC, datetime

    response = {"Credentials": {"AccessKeyId": "ASIAEXAMPLEEXAMPLE00", "SecretAccessKey": "s" * 40,
                                "SessionToken": "t" * 120, "Expiration": datetime.now(UTC) + timedelta(hours=1)},
                "AssumedRoleUser": {"AssumedRoleId": "AROAEXAMPLE:x", "Arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/ClusterraShell/x"}}
    stubber.add_response("assume_role_with_web_identity", response)
    secrets_seen.extend(["s" * 40, "t" * 120])
    aws.account_client(ssm.bob_aws, "ssm")
    aws.account_client(ssm.bob_aws, "ssm")  # a second response was never queued: no second STS call
    stubber.assert_no_pending_responses()


@pytest.mark.parametrize("operation, code, words, flags", [
    ("start_session", "TargetNotConnected", "SSM agent is offline", {}),
    ("send_command", "InvalidInstanceId", "not managed by SSM", {}),
    ("start_session", "InvalidDocument", "document is missing", {}),
    ("send_command", "ThrottlingException", "throttling", {"retryable": True}),
    ("start_session", "TooManyUpdates", "throttling", {"retryable": True}),
    ("start_session", "AccessDeniedException", "denied StartSession", {}),
    ("start_session", "ExpiredTokenException", "credentials for this session have expired", {"credentials_invalid": True}),
    ("send_command", "InvalidClientTokenId", "revoked", {"credentials_invalid": True}),
    ("resume_session", "DoesNotExistException", "no longer exists", {}),
    ("send_command", "SomethingNew", "AWS refused SendCommand: SomethingNew", {}),
])
def test_ssm_errors_through_call(operation, code, words, flags):
    from botocore.session import get_session

    ssm = get_session().create_client("ssm", region_name=REGION, aws_access_key_id="AKIAEXAMPLE",
                                       aws_secret_access_key="x", config=aws._config())
    stubber = Stubber(ssm)
    stubber.add_client_error(operation, service_error_code=code, service_message="details", http_status_code=400)
    params = {"start_session": {"Target": INSTANCE, "DocumentName": "Clusterra-Shell"},
              "send_command": {"InstanceIds": [INSTANCE], "DocumentName": "AWS-RunShellScript", "Parameters": {"commands": ["id"]}},
              "resume_session": {"SessionId": "tenant-1-user-2-0123456789abcdef0"}}[operation]
    with stubber, pytest.raises(aws.AwsError) as info:
        aws.call(ssm, operation, **params)
    assert words in str(info.value) and info.value.code == code
    for name, value in flags.items():
        assert getattr(info.value, name) is value


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_sts_endpoint(ssm):
    ssm.aws_cluster.backend_settings = {**ssm.aws_cluster.backend_settings, "sts_endpoint_url": f"http://127.0.0.1:{_closed_port()}"}
    with pytest.raises(aws.AwsError, match="Could not connect to the AWS endpoint for AssumeRoleWithWebIdentity") as info:
        aws.client_for(ssm.aws_cluster, "ssm", subject="tenant-1-user-2", email="", run_as="bob")
    assert info.value.retryable and info.value.code == "EndpointConnectionError"


def test_sts_that_never_answers_times_out(ssm, settings):
    settings.AWS_READ_TIMEOUT = 1
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)  # accepts the connection, never answers
    try:
        port = server.getsockname()[1]
        ssm.aws_cluster.backend_settings = {**ssm.aws_cluster.backend_settings, "sts_endpoint_url": f"http://127.0.0.1:{port}"}
        started = time.monotonic()
        with pytest.raises(aws.AwsError, match="did not answer AssumeRoleWithWebIdentity within 1 s") as info:
            aws.client_for(ssm.aws_cluster, "ssm", subject="tenant-1-user-2", email="", run_as="bob")
        assert time.monotonic() - started < 10 and info.value.code == "ReadTimeoutError"
    finally:
        server.close()


def test_connect_timeout_and_param_errors_are_described():
    error = aws.describe_client_error(ConnectTimeoutError(endpoint_url="https://ssm.us-east-1.amazonaws.com"), "StartSession")
    assert "Timed out connecting to AWS for StartSession" in str(error) and error.retryable
    leaky = ParamValidationError(report="Invalid length for parameter WebIdentityToken, value: eyJhbGciOiJIUzI1NiJ9.e30.abc")
    error = aws.describe_client_error(leaky, "AssumeRoleWithWebIdentity")
    assert "eyJ" not in str(error) and "eyJ" not in error.detail and "invalid AssumeRoleWithWebIdentity request" in str(error)
    assert aws.scrub("token " + "A" * 80) == "token [redacted]"


def test_bad_aws_settings_stop_start_up(tmp_path):
    import os
    import subprocess
    import sys

    base_env = {**os.environ, "CLUSTERRA_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "clusterra.settings"}
    for env, expected in [
        ({"CLUSTERRA_ISSUER_URL": "ftp://portal.example.org"}, "CLUSTERRA_ISSUER_URL must be an http(s) URL"),
        ({"CLUSTERRA_ISSUER_URL": "https://portal.example.org/?x=1"}, "no query"),
        ({"CLUSTERRA_AWS_TOKEN_LIFETIME": "5"}, "CLUSTERRA_AWS_TOKEN_LIFETIME must be at least 60"),
        ({"CLUSTERRA_AWS_SESSION_DURATION": "900", "CLUSTERRA_AWS_CREDENTIAL_REFRESH_MARGIN": "900"}, "well below"),
    ]:
        result = subprocess.run([sys.executable, "-c", "import django; django.setup()"], env={**base_env, **env},
                                capture_output=True, text=True, timeout=60)
        assert result.returncode != 0 and expected in result.stderr, (env, result.stderr[-500:])
    ok = subprocess.run([sys.executable, "-c", "import django; django.setup(); from django.conf import settings; "
                         "print(settings.AWS_ISSUER_URL)"], env={**base_env, "CLUSTERRA_ISSUER_URL": "https://portal.example.org/"},
                        capture_output=True, text=True, timeout=60)
    assert ok.stdout.strip() == "https://portal.example.org"
