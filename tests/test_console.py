"""The tenant admin console, /t/<tenant>/admin/: who may use it, and what each page and action does.

Head-node work is faked (clusters.provisioning's create/lock/unlock are replaced), so nothing is created
or locked on this machine: the cast's people all map to the tests' real POSIX user.
"""

import json
import socket
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from accounts.console import people as people_views
from accounts.models import AccessRule, ApiToken, IdentityProvider, Membership, Tenant, User
from accounts.services import create_api_token, ensure_access_rule, ensure_user
from audit.models import AuditEvent
from audit.services import record_event
from clusters import provisioning
from clusters.models import Cluster, ClusterAccount, PosixIdentity
from clusters.services import map_account
from terminal import actions as terminal_actions
from terminal.actions import open_terminal_session
from terminal.models import TerminalSession
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

SSM_ERROR = "must be an AWS region"


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    """The cast's passwords are never checked here (force_login): hash them cheaply."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def head_nodes(monkeypatch):
    """Fake head nodes: each call is recorded; `head_nodes.down` makes the next calls fail (retryable)."""

    class HeadNodes:
        calls: list[tuple[str, str, str, int]] = []
        down = False

    nodes = HeadNodes()
    nodes.calls = []

    def fake(name):
        def run(cluster, *, username, uid, **options):
            if nodes.down:
                raise provisioning.ProvisioningError("the head node did not answer (test)", retryable=True)
            nodes.calls.append((name, cluster.slug, username, uid))
            return provisioning.ProvisionResult([f"{name} {username}"])
        return run

    for name in ("create_posix_account", "lock_posix_account", "unlock_posix_account"):
        monkeypatch.setattr(provisioning, name, fake(name))
    # No portal process holds the tests' sessions: nobody ends them, so waiting for that is skipped.
    monkeypatch.setattr(terminal_actions, "wait_until_ended", lambda session_ids, timeout=3.0: False)
    monkeypatch.setattr(people_views, "wait_until_ended", terminal_actions.wait_until_ended)
    return nodes


@pytest.fixture
def world(cast):
    """The cast, plus olga (an offboarded admin of acme), bob's live session and token, a rule, and
    bob's hpc account waiting for head-node work."""
    olga = ensure_user(email="olga@acme.test", password=PASSWORD)
    Membership.objects.create(tenant=cast.acme, user=olga, role=Membership.Role.ADMIN, status=Membership.Status.OFFBOARDED)
    cast.olga = olga
    cast.session = open_terminal_session(user=cast.bob, tenant_slug="acme", cluster_slug="hpc", working_directory=None,
                                         client_address="127.0.0.1", user_agent="test")
    cast.token, _ = create_api_token(user=cast.bob, tenant=cast.acme, name="laptop")
    cast.rule = ensure_access_rule(tenant=cast.acme, group="hpc-users", role="member", clusters=[cast.hpc])
    # bob gets a POSIX name of his own (the cast shares one POSIX user; the fake head nodes need none).
    cast.account = map_account(cluster=cast.hpc, user=cast.bob, posix_username="bob-acme", uid=cast.acme.uid_range_start + 500)
    ClusterAccount.objects.filter(pk=cast.account.pk).update(head_node_action="unlock", head_node_error="ssh: timed out",
                                                             head_node_attempts=2, head_node_retry_at=timezone.now() + timedelta(minutes=4))
    return cast


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def console_requests(w) -> list[tuple[str, str, dict | None]]:
    """Every console URL: (method, path, POST data). POSTs are valid for an admin, in an order that works."""
    base, bob = "/t/acme/admin", w.bob.pk
    hpc = [str(w.hpc.pk)]
    gets = [("get", f"{base}/{path}", None) for path in (
        "", "?q=bob&status=active", "people/add/", f"people/{bob}/", f"people/{bob}/suspend/", f"people/{bob}/offboard/",
        f"people/{bob}/reinstate/",
        "clusters/", "clusters/add/", "clusters/hpc/edit/", "access/", "access/add/", f"access/{w.rule.pk}/",
        f"access/{w.rule.pk}/delete/", "identity/", "preview/", "activity/", "activity/?q=needle&person=bob%40acme.test", "activity/events/",
        "activity/events/?action=person.&actor=alice", "activity/events/export.jsonl", "activity/events/export.csv",
    )]
    cluster_form = {"name": "Acme HPC 2", "backend": "local", "backend_settings": "{}", "idle_timeout": "30m",
                    "max_session_duration": "8h", "home_template": "/home/{username}", "shared_roots": "/fsx",
                    "poll_interval": "10s"}
    posts = [
        ("post", f"{base}/people/{bob}/accounts/{w.account.pk}/retry/", {}),
        ("post", f"{base}/people/{bob}/unlock/", {}),
        ("post", f"{base}/people/{bob}/role/", {"role": "admin"}),
        ("post", f"{base}/people/{bob}/sessions/{w.session.pk}/end/", {}),
        ("post", f"{base}/people/{bob}/tokens/{w.token.pk}/revoke/", {}),
        ("post", f"{base}/preview/", {"claims": '{"email": "x@acme.test", "groups": ["hpc-users"]}'}),
        ("post", f"{base}/identity/test/", {}),
        ("post", f"{base}/people/add/", {"email": "new@acme.test", "role": "member", "clusters": hpc}),
        ("post", f"{base}/clusters/add/", {**cluster_form, "slug": "gpu", "name": "GPU"}),
        ("post", f"{base}/clusters/hpc/edit/", cluster_form),
        ("post", f"{base}/access/add/", {"group": "hpc-admins", "role": "admin", "clusters": hpc}),
        ("post", f"{base}/access/{w.rule.pk}/", {"group": "hpc-users", "role": "member"}),
        ("post", f"{base}/identity/provider/", {"name": "Okta", "issuer": "https://idp.acme.test", "client_id": "portal",
                                                "client_secret": "s3cret", "scopes": "openid email groups",
                                                "groups_claim": "groups", "enabled": "on"}),
        ("post", f"{base}/identity/policy/", {"local_signin_enabled": "on", "uid_range_start": "30000", "uid_range_end": "39999"}),
        ("post", f"{base}/people/{bob}/suspend/", {"reason": "laptop stolen"}),
        ("post", f"{base}/people/{bob}/reinstate/", {"reason": "laptop found"}),
        ("post", f"{base}/people/{bob}/offboard/", {"reason": "left the lab"}),
        ("post", f"{base}/access/{w.rule.pk}/delete/", {}),
    ]
    return gets + posts


def snapshot(w) -> dict:
    """Everything a console action could change."""
    return {
        "events": AuditEvent.objects.count(),
        "users": User.objects.count(),
        "memberships": sorted(Membership.objects.values_list("user_id", "status", "role")),
        "accounts": sorted(ClusterAccount.objects.values_list("pk", "state", "head_node_action", "head_node_attempts")),
        "tokens": sorted(ApiToken.objects.values_list("pk", "revoked_at")),
        "sessions": sorted(TerminalSession.objects.values_list("pk", "revoke_requested_at", "ended_at")),
        "rules": sorted(AccessRule.objects.values_list("pk", "group", "role")),
        "clusters": sorted(Cluster.objects.values_list("pk", "name", "idle_timeout")),
        "providers": IdentityProvider.objects.count(),
        "tenants": sorted(Tenant.objects.values_list("pk", "local_signin_enabled", "uid_range_start")),
    }


def test_only_an_active_admin_of_the_tenant_gets_in(world, head_nodes):
    requests = console_requests(world)
    before = snapshot(world)
    for user in (world.charlie, world.bob, world.olga):  # another tenant's admin, a member, an offboarded admin
        client = signed_in(user)
        for method, path, data in requests:
            response = client.get(path) if method == "get" else client.post(path, data)
            assert response.status_code == 404, (user.email, method, path, response.status_code)
    anonymous = Client()
    for method, path, data in requests:
        response = anonymous.get(path) if method == "get" else anonymous.post(path, data)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), path
    assert snapshot(world) == before and head_nodes.calls == []
    # The admin of another tenant does not get this tenant's objects through their own console either.
    charlie = signed_in(world.charlie)
    for path in (f"/t/other/admin/people/{world.bob.pk}/", f"/t/other/admin/access/{world.rule.pk}/",
                 "/t/other/admin/clusters/nope/edit/"):
        assert charlie.get(path).status_code == 404, path
    assert charlie.post(f"/t/other/admin/people/{world.bob.pk}/suspend/", {"reason": "x"}).status_code == 404
    assert snapshot(world) == before

    alice = signed_in(world.alice)
    for method, path, data in requests:
        response = alice.get(path) if method == "get" else alice.post(path, data)
        expected = (302,) if path.endswith("/reinstate/") and method == "get" else (200,) if method == "get" else (200, 302)
        assert response.status_code in expected, (method, path, response.status_code)  # bob is active: nothing to reinstate
        if method == "post":
            assert "errorlist" not in response.content.decode(), (path, response.content.decode()[-3000:])
    assert AuditEvent.objects.filter(actor=world.alice).count() > 15
    # POST-only actions answer an admin's GET with 405, and every change needs the CSRF token.
    assert alice.get(f"/t/acme/admin/people/{world.bob.pk}/unlock/").status_code == 405
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(world.alice)
    assert strict.post(f"/t/acme/admin/people/{world.bob.pk}/suspend/", {"reason": "x"}).status_code == 403


def test_people_list_searches_and_filters(world, client):
    client.force_login(world.alice)
    client.post("/t/acme/admin/people/add/", {"email": "zed@acme.test", "role": "member", "posix_name": "zorro"})
    Membership.objects.filter(user=world.rita).update(status=Membership.Status.SUSPENDED)
    page = client.get("/t/acme/admin/").content.decode()
    assert all(email in page for email in ("alice@acme.test", "bob@acme.test", "olga@acme.test", "zed@acme.test"))
    assert "charlie@other.test" not in page
    assert 'data-label="Live sessions"><a href' in page  # bob's live session is counted
    found = client.get("/t/acme/admin/?q=zorro").content.decode()
    assert "zed@acme.test" in found and "bob@acme.test" not in found
    found = client.get("/t/acme/admin/?q=BOB").content.decode()
    assert "bob@acme.test" in found and "zed@acme.test" not in found
    suspended = client.get("/t/acme/admin/?status=suspended").content.decode()
    assert "rita@acme.test" in suspended and "bob@acme.test" not in suspended


def test_person_page_shows_access_sessions_tokens_and_head_node_work(world, client):
    Membership.objects.filter(user=world.bob).update(idp_groups=["hpc-users", "physics"])
    client.force_login(world.alice)
    page = client.get(f"/t/acme/admin/people/{world.bob.pk}/").content.decode()
    for text in ("hpc-users, physics", "ssh: timed out", "2 failed attempts", "Retry now", "Unlock the posix account",
                 f"/t/acme/admin/people/{world.bob.pk}/sessions/{world.session.pk}/end/", f"ctk_{world.token.prefix}_",
                 "not locked out", "Suspend…", "Offboard…"):
        assert text.lower() in page.lower(), text
    assert "Reinstate…" not in page
    own = client.get(f"/t/acme/admin/people/{world.alice.pk}/").content.decode()
    assert "Offboard…" not in own  # nobody offboards themselves from here
    assert client.post(f"/t/acme/admin/people/{world.alice.pk}/offboard/", {"reason": "oops"}).status_code == 302
    assert Membership.objects.get(user=world.alice, tenant=world.acme).status == Membership.Status.ACTIVE
    assert client.get(f"/t/acme/admin/people/{world.charlie.pk}/").status_code == 404  # not a person of acme


def test_retry_now_runs_the_waiting_head_node_work(world, client, head_nodes):
    client.force_login(world.alice)
    head_nodes.down = True
    page = client.post(f"/t/acme/admin/people/{world.bob.pk}/accounts/{world.account.pk}/retry/", follow=True).content.decode()
    assert "failed again: the head node did not answer" in page
    assert ClusterAccount.objects.get(pk=world.account.pk).head_node_attempts == 3
    head_nodes.down = False
    page = client.post(f"/t/acme/admin/people/{world.bob.pk}/accounts/{world.account.pk}/retry/", follow=True).content.decode()
    assert "Acme HPC: Unlock the POSIX account: done." in page
    account = ClusterAccount.objects.get(pk=world.account.pk)
    assert account.state == "active" and account.head_node_action == "" and [c[0] for c in head_nodes.calls] == [
        "create_posix_account", "unlock_posix_account"]
    actions = list(AuditEvent.objects.filter(target_id=str(account.pk), action__startswith="cluster_account.head_node")
                   .order_by("id").values_list("action", "actor_label"))
    assert actions == [("cluster_account.head_node.retry", "alice@acme.test"), ("cluster_account.head_node.unlock.fail", "system"),
                       ("cluster_account.head_node.retry", "alice@acme.test"), ("cluster_account.head_node.unlock", "system")]


def test_ending_a_session_and_revoking_a_token(world, client):
    client.force_login(world.alice)
    response = client.post(f"/t/acme/admin/people/{world.bob.pk}/sessions/{world.session.pk}/end/", follow=True)
    assert "is recorded" in response.content.decode()  # no process holds it here: marked for its holder
    assert TerminalSession.objects.get(pk=world.session.pk).revoke_requested_at is not None
    assert AuditEvent.objects.get(action="terminal.session.revoke").actor == world.alice
    client.post(f"/t/acme/admin/people/{world.bob.pk}/tokens/{world.token.pk}/revoke/")
    assert ApiToken.objects.get(pk=world.token.pk).revoked_at is not None
    assert AuditEvent.objects.get(action="api_token.revoke").actor == world.alice
    # A session or token of someone else, named under bob's URL, is not found.
    other = open_terminal_session(user=world.alice, tenant_slug="acme", cluster_slug="hpc", working_directory=None,
                                  client_address=None, user_agent="t")
    assert client.post(f"/t/acme/admin/people/{world.bob.pk}/sessions/{other.pk}/end/").status_code == 404


def test_suspend_needs_a_reason_and_reinstate_gives_everything_back(world, client, head_nodes):
    client.force_login(world.alice)
    url = f"/t/acme/admin/people/{world.bob.pk}/suspend/"
    assert 'name="reason"' in client.get(url).content.decode()
    assert client.post(url, {"reason": ""}).status_code == 200
    assert Membership.objects.get(user=world.bob, tenant=world.acme).status == "active"
    page = client.post(url, {"reason": "laptop stolen"}, follow=True).content.decode()
    assert "Suspended bob@acme.test: 1 live terminal session(s) ended" in page
    membership = Membership.objects.get(user=world.bob, tenant=world.acme)
    assert (membership.status, membership.status_reason) == ("suspended", "laptop stolen")
    assert ClusterAccount.objects.get(pk=world.account.pk).state == "suspended"
    assert TerminalSession.objects.get(pk=world.session.pk).revoke_requested_at is not None
    assert AuditEvent.objects.get(action="person.suspend").actor == world.alice
    assert head_nodes.calls == []  # a suspension changes nothing on the head nodes
    assert client.post(url, {"reason": "again"}, follow=True).content.decode().count("nothing to suspend") == 1

    client.post(f"/t/acme/admin/people/{world.bob.pk}/reinstate/", {"reason": ""})
    assert Membership.objects.get(user=world.bob, tenant=world.acme).status == "active"
    assert ClusterAccount.objects.get(pk=world.account.pk).state == "active"
    assert AuditEvent.objects.filter(action="membership.set", actor=world.alice, data__status="active").exists()


def test_offboarding_revokes_tokens_ends_sessions_and_locks_the_accounts(world, client, head_nodes):
    client.force_login(world.alice)
    page = client.get(f"/t/acme/admin/people/{world.bob.pk}/offboard/").content.decode()
    assert "Offboard bob@acme.test?" in page and 'name="reason"' in page
    page = client.post(f"/t/acme/admin/people/{world.bob.pk}/offboard/", {"reason": "left the lab"}, follow=True).content.decode()
    for line in ("Offboarded bob@acme.test from acme: left the lab", "live terminal sessions ended: 1", "API tokens revoked: 1",
                 "hpc: POSIX account locked on the head node"):
        assert line in page, line
    assert Membership.objects.get(user=world.bob, tenant=world.acme).status == "offboarded"
    assert ApiToken.objects.get(pk=world.token.pk).revoked_at is not None
    assert TerminalSession.objects.get(pk=world.session.pk).revoke_requested_at is not None
    assert ClusterAccount.objects.get(pk=world.account.pk).state == "revoked"
    assert head_nodes.calls == [("lock_posix_account", "hpc", world.account.posix_username, world.account.uid)]
    event = AuditEvent.objects.get(action="person.offboard")
    assert event.actor == world.alice and event.data["api_tokens_revoked"] == 1 and event.data["reason"] == "left the lab"


def test_adding_a_person_onboards_them_with_a_checked_posix_name(world, client, head_nodes):
    client.force_login(world.alice)
    url = "/t/acme/admin/people/add/"
    for name, why in (("root", "reserved system name"), (world.account.posix_username, "belongs to someone else"),
                      ("9lives", "not starting with a digit")):
        page = client.post(url, {"email": "new@acme.test", "role": "member", "posix_name": name}).content.decode()
        assert why in page.replace("&#x27;", "'"), name
    assert "already in Acme Research" in client.post(url, {"email": "BOB@acme.test", "role": "member"}).content.decode()
    assert not User.objects.filter(email="new@acme.test").exists()

    response = client.post(url, {"email": "New.Person@acme.test", "full_name": "New Person", "role": "member",
                                 "clusters": [world.hpc.pk]})
    user = User.objects.get(email="new.person@acme.test")
    assert response.status_code == 302 and response["Location"] == f"/t/acme/admin/people/{user.pk}/"
    identity = PosixIdentity.objects.get(tenant=world.acme, user=user)
    assert identity.username == "new_person" and identity.uid == world.account.uid + 1  # above every uid given
    assert ClusterAccount.objects.get(user=user, cluster=world.hpc).state == "active"
    assert head_nodes.calls == [("create_posix_account", "hpc", "new_person", identity.uid)]
    assert AuditEvent.objects.filter(action="membership.set", actor=world.alice, data__user="new.person@acme.test").exists()
    assert AuditEvent.objects.filter(action="cluster_account.grant", actor=world.alice).exists()


def test_adding_a_person_whose_head_node_does_not_answer_leaves_a_pending_account(world, client, head_nodes):
    head_nodes.down = True
    client.force_login(world.alice)
    page = client.post("/t/acme/admin/people/add/", {"email": "pat@acme.test", "role": "admin", "clusters": [world.hpc.pk],
                                                     "posix_name": "patp"}, follow=True).content.decode()
    assert "is pending on the head node: the head node did not answer" in page and "Retry now" in page
    assert Membership.objects.get(user__email="pat@acme.test").role == "admin"
    assert PosixIdentity.objects.get(user__email="pat@acme.test").username == "patp"


def test_clusters_are_created_and_edited_with_validated_settings(world, client):
    client.force_login(world.alice)
    form = {"name": "Cloud", "slug": "cloud", "backend": "ssm", "home_template": "/home/{username}", "idle_timeout": "20m",
            "max_session_duration": "12h", "poll_interval": "10s",
            "backend_settings": json.dumps({"region": "nowhere", "instance_id": "i-0123456789abcdef0",
                                            "role_arn": "arn:aws:iam::123456789012:role/Shell"})}
    page = client.post("/t/acme/admin/clusters/add/", form).content.decode()
    assert SSM_ERROR in page and not Cluster.objects.filter(slug="cloud").exists()
    page = client.post("/t/acme/admin/clusters/add/", {**form, "backend_settings": "{not json"}).content.decode()
    assert "Not valid JSON" in page
    page = client.post("/t/acme/admin/clusters/add/", {**form, "backend": "local", "backend_settings": "", "idle_timeout": "20",
                                                       "poll_posix_username": "root", "poll_uid": "0"}).content.decode()
    assert "with its unit" in page and "never runs as root" in page
    assert "already has a cluster" in client.post("/t/acme/admin/clusters/add/", {**form, "slug": "hpc"}).content.decode()

    good = {**form, "backend_settings": json.dumps({"region": "eu-west-1", "instance_id": "i-0123456789abcdef0",
                                                    "role_arn": "arn:aws:iam::123456789012:role/Shell"})}
    assert client.post("/t/acme/admin/clusters/add/", good).status_code == 302
    cloud = Cluster.objects.get(tenant=world.acme, slug="cloud")
    assert (cloud.backend, cloud.idle_timeout, cloud.max_session_duration, cloud.poll_interval) == ("ssm", 1200, 43200, 10)
    assert AuditEvent.objects.get(action="cluster.create", target_id=str(cloud.pk)).actor == world.alice
    edit = client.get("/t/acme/admin/clusters/cloud/edit/").content.decode()
    assert 'value="20m"' in edit and 'value="12h"' in edit  # durations shown with their unit, not as seconds
    response = client.post("/t/acme/admin/clusters/cloud/edit/", {**good, "slug": "renamed", "idle_timeout": "1h 30m",
                                                                 "shared_roots": "/fsx\n/scratch"})
    assert response.status_code == 302
    cloud.refresh_from_db()
    assert (cloud.slug, cloud.idle_timeout, cloud.shared_roots) == ("cloud", 5400, ["/fsx", "/scratch"])  # the slug stays
    event = AuditEvent.objects.get(action="cluster.update", target_id=str(cloud.pk))
    assert event.data["changes"]["idle_timeout"] == [1200, 5400] and "slug" not in event.data["changes"]
    listing = client.get("/t/acme/admin/clusters/").content.decode()
    assert "1:30:00" in listing and "12:00:00" in listing  # Slurm's format


def test_access_rules_are_created_edited_and_deleted(world, client):
    client.force_login(world.alice)
    assert client.post("/t/acme/admin/access/add/", {"group": "hpc-admins", "role": "admin", "clusters": [world.hpc.pk]}).status_code == 302
    rule = AccessRule.objects.get(tenant=world.acme, group="hpc-admins")
    assert list(rule.clusters.all()) == [world.hpc]
    assert "already a rule" in client.post("/t/acme/admin/access/add/", {"group": "hpc-users", "role": "member"}).content.decode()
    assert client.post("/t/acme/admin/access/add/", {"group": "x", "role": "member", "clusters": [world.other_hpc.pk]}).status_code == 200
    client.post(f"/t/acme/admin/access/{rule.pk}/", {"group": "hpc-admins", "role": "member"})
    rule.refresh_from_db()
    assert rule.role == "member" and not rule.clusters.exists()
    assert "Delete the rule for" in client.get(f"/t/acme/admin/access/{rule.pk}/delete/").content.decode()
    client.post(f"/t/acme/admin/access/{rule.pk}/delete/")
    assert not AccessRule.objects.filter(pk=rule.pk).exists()
    assert list(AuditEvent.objects.filter(actor=world.alice, action__startswith="access_rule.").order_by("id")
                .values_list("action", flat=True)) == ["access_rule.create", "access_rule.update", "access_rule.delete"]


IDP_FORM = {"name": "Okta", "issuer": "https://idp.acme.test", "client_id": "portal", "scopes": "openid email groups",
            "groups_claim": "groups", "email_domains": "acme.test, @Lab.Acme.test", "enabled": "on"}


def test_identity_provider_secret_is_write_only_and_never_audited(world, client):
    client.force_login(world.alice)
    page = client.post("/t/acme/admin/identity/provider/", {**IDP_FORM, "scopes": "email"}).content.decode()
    assert "must include openid" in page and "client secret" in page.lower()
    client.post("/t/acme/admin/identity/provider/", {**IDP_FORM, "client_secret": "s3cret-value-123"})
    provider = IdentityProvider.objects.get(tenant=world.acme)
    assert provider.client_secret() == "s3cret-value-123" and "s3cret" not in provider.client_secret_sealed
    assert provider.email_domains == ["acme.test", "lab.acme.test"]
    client.post("/t/acme/admin/identity/provider/", {**IDP_FORM, "client_id": "portal-2", "client_secret": ""})
    provider.refresh_from_db()
    assert provider.client_id == "portal-2" and provider.client_secret() == "s3cret-value-123"  # blank keeps it
    events = list(AuditEvent.objects.filter(action__startswith="identity_provider.").order_by("id"))
    assert [(e.action, e.data["client_secret"]) for e in events] == [("identity_provider.create", "changed"),
                                                                     ("identity_provider.update", "unchanged")]
    assert "s3cret" not in json.dumps([e.data for e in AuditEvent.objects.all()])
    assert "s3cret" not in client.get("/t/acme/admin/identity/").content.decode()
    # The portal fetches the issuer: https only, except an IdP on this machine.
    page = client.post("/t/acme/admin/identity/provider/", {**IDP_FORM, "issuer": "http://169.254.169.254/latest"}).content.decode()
    assert "must be an https:// URL" in page
    assert IdentityProvider.objects.get(tenant=world.acme).issuer == "https://idp.acme.test"
    # Another tenant cannot claim acme's email domain.
    charlie = signed_in(world.charlie)
    page = charlie.post("/t/other/admin/identity/provider/", {**IDP_FORM, "email_domains": "acme.test", "client_secret": "x"})
    assert "Already used by another tenant" in page.content.decode()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is


def test_testing_the_connection_says_what_is_wrong(world, client):
    IdentityProvider.objects.create(tenant=world.acme, name="Down", issuer=f"http://127.0.0.1:{_closed_port()}",
                                    client_id="portal")
    client.force_login(world.alice)
    page = client.post("/t/acme/admin/identity/test/").content.decode()
    assert "The connection does not work" in page and "cannot be reached (discovery document" in page


def test_testing_the_connection_to_a_real_provider(world, client, oidc_provider):
    IdentityProvider.objects.create(tenant=world.acme, name="Test IdP", issuer=oidc_provider.issuer, client_id=oidc_provider.client_id)
    client.force_login(world.alice)
    page = client.post("/t/acme/admin/identity/test/").content.decode()
    assert "The connection works" in page and f"Issuer {oidc_provider.issuer} answers" in page and "RS256" in page


def test_an_identity_provider_from_the_environment_is_read_only(world, client, settings):
    settings.OIDC_ISSUER, settings.OIDC_CLIENT_ID, settings.OIDC_TENANT = "https://sso.acme.test", "env-client", "acme"
    client.force_login(world.alice)
    page = client.get("/t/acme/admin/identity/").content.decode()
    assert "set in the server's environment" in page and "env-client" in page and 'name="client_id"' not in page
    page = client.post("/t/acme/admin/identity/provider/", {**IDP_FORM, "client_secret": "x"}, follow=True).content.decode()
    assert "change it there" in page and not IdentityProvider.objects.exists()


def test_tenant_policy(world, client):
    client.force_login(world.alice)
    url = "/t/acme/admin/identity/policy/"
    policy = {"uid_range_start": "30000", "uid_range_end": "39999", "offboard_kill_processes": "on"}
    assert "Set up and enable an identity provider first" in client.post(url, policy).content.decode()  # local sign-in off
    assert "must end after it starts" in client.post(url, {**policy, "local_signin_enabled": "on", "uid_range_end": "100"}).content.decode()
    page = client.post(url, {**policy, "local_signin_enabled": "on", "uid_range_start": "500"}).content.decode()
    assert "uids below 1000 are system accounts" in page
    assert client.post(url, {**policy, "local_signin_enabled": "on", "offboard_cancel_jobs": "on"}).status_code == 302
    tenant = Tenant.objects.get(pk=world.acme.pk)
    assert (tenant.uid_range_start, tenant.uid_range_end, tenant.offboard_cancel_jobs) == (30000, 39999, True)
    event = AuditEvent.objects.get(action="tenant.policy.update")
    assert event.actor == world.alice and event.data["changes"]["uid_range_start"] == [20000, 30000]


def test_mapping_preview_shows_ignored_groups_and_name_refusals_and_writes_nothing(world, client):
    client.force_login(world.alice)
    before = snapshot(world)
    claims = {"email": "root@x.test", "groups": ["hpc-users", "marketing"]}
    page = client.post("/t/acme/admin/preview/", {"claims": json.dumps(claims)}).content.decode().replace("&#x27;", "'")
    assert "<dt>Ignored (no rule)</dt><dd>marketing</dd>" in page and "<dt>Matched by a rule</dt><dd>hpc-users</dd>" in page
    assert "<code>root2</code>" in page and "'root' is a reserved system name" in page
    assert f"the next free uid, {world.account.uid + 1} now" in page and "signed in as member" in page and "Acme HPC" in page
    # bob: no groups seen, so the next single sign-on would offboard him.
    page = client.post("/t/acme/admin/preview/", {"person": world.bob.pk}).content.decode()
    assert "offboarded: no group gives access any more" in page
    assert "Pick a person or paste claims" in client.post("/t/acme/admin/preview/", {}).content.decode()
    assert "not valid json" in client.post("/t/acme/admin/preview/", {"claims": "[1,"}).content.decode().lower()
    # A POSIX name chosen by the IdP is never altered: a reserved one is refused.
    IdentityProvider.objects.create(tenant=world.acme, name="Okta", issuer="https://idp.acme.test", client_id="p",
                                    posix_name_claim="posix")
    page = client.post("/t/acme/admin/preview/", {"claims": json.dumps({**claims, "posix": "root"})}).content.decode()
    assert "refused: The POSIX name from the 'posix' claim cannot be used" in page.replace("&#x27;", "'")
    assert client.post("/t/acme/admin/preview/", {"person": world.charlie.pk}).status_code == 200  # not offered: a form error
    assert snapshot(world) == {**before, "providers": 1}


def test_activity_events_are_the_tenants_newest_first_and_filtered(world, client):
    # An event from 40 days ago (events cannot be edited afterwards: the database refuses).
    AuditEvent.objects.create(tenant=world.acme, actor=world.alice, actor_label=world.alice.email, action="person.offboard",
                              data={"user": "gone@acme.test"}, created_at=timezone.now() - timedelta(days=40))
    record_event("person.suspend", tenant=world.acme, actor=world.alice, data={"user": "bob@acme.test", "reason": "holiday"})
    record_event("secret.other", tenant=world.other, actor=world.charlie, data={"user": "charlie@other.test"})
    client.force_login(world.alice)
    page = client.get("/t/acme/admin/activity/events/").content.decode()
    assert page.index("person.suspend") < page.index("person.offboard") and "secret.other" not in page
    assert "user=bob@acme.test reason=holiday" in page
    page = client.get("/t/acme/admin/activity/events/?action=person.").content.decode()
    assert "person.suspend" in page and "terminal.session.start" not in page
    page = client.get("/t/acme/admin/activity/events/?actor=BOB@").content.decode()
    assert "terminal.session.start" in page and "person.suspend" not in page
    since = (timezone.now() - timedelta(days=41)).date().isoformat()
    until = (timezone.now() - timedelta(days=39)).date().isoformat()
    page = client.get(f"/t/acme/admin/activity/events/?since={since}&until={until}").content.decode()
    assert "gone@acme.test" in page and "person.suspend" not in page
    AuditEvent.objects.bulk_create([AuditEvent(tenant=world.acme, actor_label="bulk", action="bulk.event") for _ in range(60)])
    page = client.get("/t/acme/admin/activity/events/?action=bulk.").content.decode()
    assert page.count("<code>bulk.event</code>") == 50 and "More events" in page
    more = page.split('hx-get="', 1)[1].split('"', 1)[0].replace("&amp;", "&")  # ?action=bulk.&cursor=…
    assert more.startswith("?action=bulk.&cursor=")
    assert client.get(f"/t/acme/admin/activity/events/{more}").content.decode().count("<code>bulk.event</code>") == 10


def test_navigation_bar(world, client):
    client.force_login(world.bob)
    page = client.get("/").content.decode()
    for link in ('href="/"', 'href="/t/acme/c/hpc/jobs/"', 'href="/accounts/tokens/"', 'href="/v1/docs"'):
        assert link in page, link
    assert "/admin/" not in page and "/t/acme/sessions/" not in page
    client.force_login(world.alice)
    page = client.get("/t/acme/admin/clusters/").content.decode()
    assert 'href="/t/acme/admin/" aria-current="page">Admin</a>' in page and 'href="/t/acme/sessions/">Sessions</a>' in page
    client.force_login(world.olga)
    assert "/t/acme/admin/" not in client.get("/").content.decode()


def test_an_admin_changes_a_role_but_not_their_own(world, client):
    client.force_login(world.alice)
    client.post(f"/t/acme/admin/people/{world.bob.pk}/role/", {"role": "admin"})
    assert Membership.objects.get(tenant=world.acme, user=world.bob).role == "admin"
    event = AuditEvent.objects.filter(action="membership.set", target_type="accounts.membership").latest("id")
    assert event.data["role"] == "admin" and event.actor == world.alice
    client.post(f"/t/acme/admin/people/{world.alice.pk}/role/", {"role": "member"})
    assert Membership.objects.get(tenant=world.acme, user=world.alice).role == "admin"
    bad = client.post(f"/t/acme/admin/people/{world.bob.pk}/role/", {"role": "owner"}, follow=True)
    assert "Choose admin or member" in bad.content.decode()
