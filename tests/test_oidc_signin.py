"""Single sign-on against a real OpenID Provider (tests/idp/server.mjs): the flow, the token checks, and
what the groups give. The portal side runs in Django's test client (host `testserver`); the IdP is a real
Node process the portal's backend talks to over HTTP."""

import pytest
import requests

from accounts.models import AccessRule, IdentityLink, IdentityProvider, Membership, Tenant, User
from audit.models import AuditEvent
from clusters.models import PosixIdentity
from tests.oidc_provider import IDP_PASSWORD, idp_sign_in

CALLBACK = "http://testserver/oidc/callback/"

pytestmark = pytest.mark.django_db


@pytest.fixture
def idp(oidc_provider_clean):
    oidc_provider_clean.add_redirect_uris(CALLBACK, post_logout_redirect_uris=["http://testserver/accounts/login/"])
    return oidc_provider_clean


@pytest.fixture
def acme(idp):
    tenant = Tenant.objects.create(slug="acme", name="Acme Research")
    provider = IdentityProvider(tenant=tenant, name="Acme IdP", issuer=idp.issuer, client_id=idp.client_id,
                                email_domains=["example.test", "demo.test"])
    provider.set_client_secret(idp.client_secret)
    provider.save()
    AccessRule.objects.create(tenant=tenant, group="clusterra-admins", role=AccessRule.Role.ADMIN)
    AccessRule.objects.create(tenant=tenant, group="clusterra-users", role=AccessRule.Role.MEMBER)
    return tenant


def sso(client, login, *, start="/oidc/authenticate/?tenant=acme"):
    """Start at the portal, sign in at the IdP with requests, and bring the code back to the portal."""
    start_response = client.get(start)
    assert start_response.status_code == 302, start_response.content[:500]
    at_idp = requests.Session()
    back = idp_sign_in(at_idp, start_response["Location"], login, IDP_PASSWORD, stop_at="http://testserver/")
    location = back.headers["Location"]
    assert location.startswith(CALLBACK), location
    return client.get(location.removeprefix("http://testserver")), location


def signed_in_user(client):
    return client.get("/accounts/preferences/").wsgi_request.user


def test_authentication_request_uses_pkce_state_and_nonce(client, acme):
    response = client.get("/oidc/authenticate/?tenant=acme")
    assert response.status_code == 302
    query = requests.utils.urlparse(response["Location"]).query
    params = dict(p.split("=", 1) for p in query.split("&"))
    assert params["code_challenge_method"] == "S256" and params["code_challenge"]
    assert params["state"] and params["nonce"] and params["response_type"] == "code"
    assert "groups" in requests.utils.unquote(params["scope"])


def test_existing_user_signs_in_as_themselves_with_role_from_groups(client, acme):
    alice = User.objects.create_user("alice@demo.test", "local-password-1", full_name="Alice")
    response, _ = sso(client, "alice@demo.test")
    assert response.status_code == 302 and response["Location"] == "/"
    assert signed_in_user(client) == alice
    membership = Membership.objects.get(tenant=acme, user=alice)
    assert (membership.role, membership.status) == ("admin", "active")
    assert membership.idp_groups == ["clusterra-admins", "clusterra-users"]
    assert IdentityLink.objects.filter(user=alice, subject="alice", issuer=acme.identity_provider.issuer).exists()
    assert client.session["oidc_id_token"].count(".") == 2  # kept for SSM clusters with token_source "idp"
    event = AuditEvent.objects.filter(action="auth.sign_in", actor=alice).get()
    assert event.data["role"] == "admin" and event.data["method"] == "oidc"


def test_new_person_gets_a_user_a_membership_and_a_posix_identity(client, acme):
    response, _ = sso(client, "carol@example.test")
    assert response.status_code == 302
    carol = User.objects.get(email="carol@example.test")
    assert not carol.has_usable_password()
    assert Membership.objects.get(tenant=acme, user=carol).role == "member"
    identity = PosixIdentity.objects.get(tenant=acme, user=carol)
    assert (identity.username, identity.uid) == ("carol", acme.uid_range_start)


@pytest.mark.parametrize("login, said", [
    ("dave@example.test", "none of your groups gives access to Acme Research"),
    ("eve@example.test", "none of your groups gives access to Acme Research"),
])
def test_people_whose_groups_give_nothing_are_refused(client, acme, login, said):
    response, _ = sso(client, login)
    assert response.status_code == 403
    assert said in response.content.decode()
    assert not signed_in_user(client).is_authenticated
    assert not Membership.objects.filter(tenant=acme, user__email=login).exists()


def test_a_group_change_takes_effect_at_the_next_sign_in(client, acme, idp):
    sso(client, "bob@demo.test")
    bob = User.objects.get(email="bob@demo.test")
    assert Membership.objects.get(tenant=acme, user=bob).role == "member"
    client.post("/accounts/logout/")

    idp.set_user_groups("bob@demo.test", ["clusterra-admins"])
    sso(client, "bob@demo.test")
    assert Membership.objects.get(tenant=acme, user=bob).role == "admin"
    client.post("/accounts/logout/")

    idp.set_user_groups("bob@demo.test", ["somewhere-else"])
    response, _ = sso(client, "bob@demo.test")
    assert response.status_code == 403
    membership = Membership.objects.get(tenant=acme, user=bob)
    assert (membership.status, membership.status_source) == ("offboarded", "idp")
    assert AuditEvent.objects.filter(action="person.offboard", target_id=str(bob.pk)).exists()

    idp.set_user_groups("bob@demo.test", ["clusterra-users"])  # back in the group: back in
    response, _ = sso(client, "bob@demo.test")
    assert response.status_code == 302
    membership.refresh_from_db()
    assert (membership.status, membership.role) == ("active", "member")


@pytest.mark.parametrize("mode, said", [
    ("forged", "not issued by your identity provider"),
    ("wrong-aud", "issued for another application (wrong audience)"),
    ("wrong-iss", "comes from another issuer"),
    ("expired", "has expired"),
    ("wrong-nonce", "nonce mismatch"),
    ("wrong-azp", "issued to another application (authorized party)"),
])
def test_tampered_id_tokens_are_refused_with_a_clear_page(client, acme, idp, mode, said):
    idp.next_id_token(mode)
    response, _ = sso(client, "alice@demo.test")
    assert response.status_code in (400, 403)
    page = response.content.decode()
    assert said in page and "Back to sign-in" in page and "Traceback" not in page
    assert not signed_in_user(client).is_authenticated
    assert AuditEvent.objects.filter(action="auth.sign_in.refused").exists()


def test_a_replayed_callback_is_refused(client, acme):
    response, callback = sso(client, "alice@demo.test")
    assert response.status_code == 302
    client.post("/accounts/logout/")
    replay = client.get(callback.removeprefix("http://testserver"))
    assert replay.status_code == 400
    assert "already used" in replay.content.decode()
    assert not signed_in_user(client).is_authenticated


def test_an_idp_that_is_down_gives_a_clear_page_and_passwords_still_work(client, acme):
    down = Tenant.objects.create(slug="downco", name="Down Co")
    IdentityProvider.objects.create(tenant=down, name="Down IdP", issuer="http://127.0.0.1:9/", client_id="x")
    response = client.get("/oidc/authenticate/?tenant=downco")
    assert response.status_code == 502
    assert "cannot be reached" in response.content.decode()
    User.objects.create_user("frank@down.test", "local-password-1")
    Membership.objects.create(tenant=down, user=User.objects.get(email="frank@down.test"))
    signed_in = client.post("/accounts/login/", {"username": "frank@down.test", "password": "local-password-1"})
    assert signed_in.status_code == 302


def test_the_tenant_is_found_from_the_email_domain_and_unknown_ones_are_named(client, acme):
    response = client.get("/oidc/authenticate/?hint=someone@example.test")
    assert response.status_code == 302 and response["Location"].startswith(acme.identity_provider.issuer)
    unknown = client.get("/oidc/authenticate/?hint=someone@nowhere.test")
    assert unknown.status_code == 404 and "No single sign-on is set up" in unknown.content.decode()


def test_password_sign_in_can_be_turned_off_per_tenant(client, acme):
    alice = User.objects.create_user("alice@demo.test", "local-password-1")
    Membership.objects.create(tenant=acme, user=alice, role="admin")
    Tenant.objects.filter(pk=acme.pk).update(local_signin_enabled=False)
    refused = client.post("/accounts/login/", {"username": "alice@demo.test", "password": "local-password-1"})
    assert refused.status_code == 200 and not signed_in_user(client).is_authenticated
    response, _ = sso(client, "alice@demo.test")
    assert response.status_code == 302 and signed_in_user(client) == alice


def test_sign_out_also_ends_the_idp_session(client, acme, idp):
    sso(client, "alice@demo.test")
    id_token = client.session["oidc_id_token"]
    response = client.post("/accounts/logout/")
    assert response.status_code == 200
    end_session = response.context["end_session_url"]
    assert end_session.startswith(idp.discovery["end_session_endpoint"] + "?")
    assert f"id_token_hint={id_token}" in end_session
    assert "post_logout_redirect_uri=http%3A%2F%2Ftestserver%2Faccounts%2Flogin%2F" in end_session
    assert 'http-equiv="refresh"' in response.content.decode()
    assert not signed_in_user(client).is_authenticated


def test_the_client_secret_is_stored_sealed(acme, idp):
    stored = IdentityProvider.objects.get(tenant=acme)
    assert idp.client_secret not in stored.client_secret_sealed
    assert stored.client_secret() == idp.client_secret


def test_the_sign_in_page_offers_the_idp_and_lets_its_origin_take_the_form(client, acme, idp):
    page = client.get("/accounts/login/")
    assert "Sign in with Acme IdP" in page.content.decode()
    origin = idp.issuer.rstrip("/")
    assert f"form-action 'self' {origin}" in page["Content-Security-Policy"]


def test_the_demo_with_the_four_variables_offers_sso_and_maps_its_groups(client, idp, settings, monkeypatch, tmp_path):
    """`make demo` with CLUSTERRA_OIDC_*: the demo's alice signs in through the IdP as herself (admin),
    bob as member with the cluster `local`; the environment's IdP needs no database row."""
    from django.core.management import call_command

    settings.DATA_DIR = tmp_path
    monkeypatch.setenv("CLUSTERRA_DEMO_PASSWORD", "demo-password-123")
    call_command("setup_demo")
    settings.OIDC_ISSUER, settings.OIDC_CLIENT_ID, settings.OIDC_CLIENT_SECRET = idp.issuer, idp.client_id, idp.client_secret
    settings.OIDC_TENANT, settings.OIDC_NAME = "demo", "Demo IdP"
    assert "Sign in with Demo IdP" in client.get("/accounts/login/").content.decode()
    alice = User.objects.get(email="alice@demo.test")
    response, _ = sso(client, "alice@demo.test", start="/oidc/authenticate/?tenant=demo")
    assert response.status_code == 302 and signed_in_user(client) == alice
    assert Membership.objects.get(user=alice, tenant__slug="demo").role == "admin"
    client.post("/accounts/logout/")
    bob = User.objects.get(email="bob@demo.test")
    response, _ = sso(client, "bob@demo.test", start="/oidc/authenticate/?tenant=demo")
    assert response.status_code == 302 and signed_in_user(client) == bob
    account = bob.cluster_accounts.get(cluster__slug="local")
    assert account.state == "active" and account.granted_by == "admin"  # the demo's own mapping is kept
    assert not IdentityProvider.objects.exists()


def test_with_several_idps_the_sign_in_page_asks_for_the_email_and_lists_no_tenant(client, acme):
    other = Tenant.objects.create(slug="initech", name="Initech Secret Project")
    IdentityProvider.objects.create(tenant=other, name="Initech IdP", issuer="https://idp.initech.test", client_id="x")
    page = client.get("/accounts/login/").content.decode()
    assert "Continue with single sign-on" in page
    assert "Initech" not in page and "Acme" not in page
    IdentityProvider.objects.all().delete()
    assert "single sign-on" not in client.get("/accounts/login/").content.decode()  # none: only the password form
