"""Single sign-on in the real browser: Chromium signs in at the local OpenID Provider (tests/idp), the
groups give a role and a cluster, the portal creates the POSIX account on this machine (root, as in CI),
and the terminal runs as that POSIX user."""

import os
import secrets

import pytest

from accounts.models import AccessRule, IdentityProvider, Membership, Tenant, User
from clusters.models import ClusterAccount
from clusters.services import ensure_cluster
from tests.oidc_provider import IDP_PASSWORD
from tests.test_browser import _in_thread, chromium_page
from tests.test_browser_csp import _HAS_LINE, _connected, _until
from tests.test_lifecycle import _free_uid_block
from tests.test_provisioning import remove_user

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="creates a real POSIX user with useradd: needs root (CI runs as root)")]


@pytest.fixture
def sso_site(transactional_db, oidc_provider_clean, live_daphne):
    idp = oidc_provider_clean
    idp.add_redirect_uris(f"{live_daphne}/oidc/callback/", post_logout_redirect_uris=[f"{live_daphne}/accounts/login/"])
    start = _free_uid_block()
    tenant = Tenant.objects.create(slug="sso", name="SSO Lab", uid_range_start=start, uid_range_end=start + 19)
    cluster = ensure_cluster(tenant=tenant, slug="hpc", name="SSO HPC")
    provider = IdentityProvider(tenant=tenant, name="Lab IdP", issuer=idp.issuer, client_id=idp.client_id)
    provider.set_client_secret(idp.client_secret)
    provider.save()
    rule = AccessRule.objects.create(tenant=tenant, group="clusterra-users", role=AccessRule.Role.MEMBER)
    rule.clusters.set([cluster])
    name = "ct" + secrets.token_hex(5)
    idp.set_user(f"{name}@example.test", sub=name, password=IDP_PASSWORD, name="Sso Person", groups=["clusterra-users"])
    yield idp, live_daphne, name
    account = ClusterAccount.objects.filter(posix_username=name).first()
    if account is not None:
        remove_user(name, account.uid)


def test_sign_in_through_the_idp_then_a_terminal_as_the_mapped_posix_user(sso_site, tmp_path):
    idp, live, name = sso_site
    # Under the site's real Content-Security-Policy: the redirect to the IdP must be allowed by it.
    with chromium_page(bypass_csp=False) as page:
        page.goto(f"{live}/accounts/login/")
        page.click("text=Sign in with Lab IdP")
        page.wait_for_url(f"{idp.issuer}/**")
        page.fill("input[name=login]", f"{name}@example.test")
        page.fill("input[name=password]", IDP_PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{live}/", timeout=30000)
        assert "SSO HPC" in page.content()

        user = _in_thread(lambda: User.objects.get(email=f"{name}@example.test"))
        membership = _in_thread(lambda: Membership.objects.get(user=user, tenant__slug="sso"))
        assert membership.role == "member"
        account = _in_thread(lambda: ClusterAccount.objects.get(user=user, cluster__slug="hpc"))
        assert (account.state, account.posix_username) == ("active", name)

        page.goto(f"{live}/t/sso/c/hpc/terminal/")
        _connected(page)
        page.locator(".xterm").click()
        page.keyboard.type("echo I am $(whoami) uid $(id -u)\n")
        _until(page, _HAS_LINE, f"I am {name} uid {account.uid}", what="the shell's answer")
        page.screenshot(path=str(tmp_path / "sso-terminal.png"))

        # Signing out ends the IdP's session too: the next "Sign in with" asks for the password again.
        page.goto(f"{live}/")
        page.click("button:has-text('Sign out')")
        page.wait_for_url(f"{live}/accounts/login/**", timeout=20000)
        page.click("text=Sign in with Lab IdP")
        page.wait_for_selector("input[name=password]", timeout=15000)
