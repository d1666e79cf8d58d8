"""Okta reconciliation (okta/reconcile.py) against a local Okta-shaped server (tests/okta_server.py).

Head-node work is faked here (clusters.provisioning's create/lock/unlock record their calls), so the
accounts become active or locked without useradd; tests/test_okta_hooks.py does it with real POSIX users.
"""

import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.core.management import CommandError, call_command
from django.test import Client

from accounts.models import AccessRule, IdentityLink, Membership, Tenant, User
from accounts.services import ensure_user
from audit.models import AuditEvent
from clusters import provisioning
from clusters.models import ClusterAccount
from clusters.services import ensure_cluster
from okta import tasks
from okta.client import OktaClient, OktaError
from okta.models import OktaConnection, SyncRun
from okta.reconcile import run_reconciliation, start_run
from terminal import actions as terminal_actions
from tests.conftest import PASSWORD
from tests.okta_server import FakeOkta

pytestmark = pytest.mark.django_db


@pytest.fixture
def head_nodes(monkeypatch):
    calls = []

    def record(name):
        def run(cluster, *, username, uid, **options):
            calls.append((name, username))
            return provisioning.ProvisionResult([f"{name} {username} (test)"])
        return run

    for name in ("create_posix_account", "lock_posix_account", "unlock_posix_account"):
        monkeypatch.setattr(provisioning, name, record(name))
    # No portal process holds terminals here: nothing to wait for.
    monkeypatch.setattr(terminal_actions, "wait_until_ended", lambda session_ids, timeout=3.0: True)
    return calls


@pytest.fixture
def okta():
    server = FakeOkta().start()
    yield server
    server.stop()


@pytest.fixture
def lab(okta, head_nodes, settings):
    """Tenant lab: rules hpc-users (member, cluster hpc) and hpc-admins (admin); Okta with five users in
    hpc-users over three pages of two, and an admin. In the portal: stay (in Okta), gone (not in Okta any
    more), manual (added by an admin, in no group)."""
    settings.OKTA_PAGE_SIZE = 2
    tenant = Tenant.objects.create(slug="lab", name="Lab", uid_range_start=40000, uid_range_end=40999)
    hpc = ensure_cluster(tenant=tenant, slug="hpc", name="Lab HPC")
    AccessRule.objects.create(tenant=tenant, group="hpc-users", role="member").clusters.set([hpc])
    AccessRule.objects.create(tenant=tenant, group="hpc-admins", role="admin")
    connection = OktaConnection(tenant=tenant, org_url=okta.url, dry_run=False, enabled=True)
    connection.set_api_token(okta.token)
    connection.save()
    people = {name: okta.user(f"{name}@lab.test") for name in ("stay", "ann", "ben", "cat", "dan", "boss")}
    okta.add_group("hpc-users", [people[n] for n in ("stay", "ann", "ben", "cat", "dan")])
    okta.add_group("hpc-admins", [people["boss"]])
    okta.add_group("hpc-users-old", [])  # `q` finds it too: only the exact name counts

    from accounts import lifecycle
    for name in ("stay", "gone"):
        lifecycle.sync_groups(tenant=tenant, user=ensure_user(email=f"{name}@lab.test"), groups=["hpc-users", "wiki"], source="test")
    manual = lifecycle.onboard_person(tenant=tenant, email="manual@lab.test", role="member", clusters=[hpc], actor=None)

    class Lab:
        pass

    lab = Lab()
    lab.tenant, lab.hpc, lab.connection, lab.people, lab.okta, lab.manual = tenant, hpc, connection, people, okta, manual.user
    return lab


def status_of(tenant, email):
    m = Membership.objects.filter(tenant=tenant, user__email=email).first()
    return None if m is None else (m.status, m.role)


def snapshot(tenant):
    return ({(m.user.email, m.status, m.role, m.status_source, tuple(m.idp_groups)) for m in Membership.objects.filter(tenant=tenant)},
            {(a.user.email, a.state) for a in ClusterAccount.objects.filter(cluster__tenant=tenant)}, User.objects.count())


def test_pages_are_followed_and_adds_and_removals_go_through_the_lifecycle(lab, head_nodes):
    run = run_reconciliation(lab.connection)
    assert run.status == "ok" and run.error == "" and not run.dry_run
    # hpc-users: 5 members over 3 pages of 2, each next page asked for with Okta's cursor from the Link header.
    pages = [r for r in lab.okta.member_requests() if lab.okta.group("hpc-users").id in r]
    assert len(pages) == 3 and "after=" not in pages[0] and all("after=" in p for p in pages[1:])
    assert run.people_read == 6 and {g["name"]: g["members"] for g in run.groups} == {"hpc-admins": 1, "hpc-users": 5}
    by_action = {(c["action"], c["email"]) for c in run.changes}
    assert by_action == {("add", f"{n}@lab.test") for n in ("ann", "ben", "cat", "dan", "boss")} | {("remove", "gone@lab.test")}
    assert run.planned == run.applied == 6 and run.failed == 0 and all(c["applied"] for c in run.changes)
    for name in ("ann", "ben", "cat", "dan"):
        assert status_of(lab.tenant, f"{name}@lab.test") == ("active", "member")
        assert ClusterAccount.objects.get(user__email=f"{name}@lab.test", cluster=lab.hpc).state == "active"
    assert status_of(lab.tenant, "boss@lab.test") == ("active", "admin")
    gone = Membership.objects.get(tenant=lab.tenant, user__email="gone@lab.test")
    assert (gone.status, gone.status_source, gone.idp_groups) == ("offboarded", "idp", ["wiki"])  # unmapped groups are kept
    assert ClusterAccount.objects.get(user=gone.user).state == "revoked"
    assert status_of(lab.tenant, "stay@lab.test") == ("active", "member")
    assert status_of(lab.tenant, "manual@lab.test") == ("active", "member")  # an admin added them; no group says otherwise
    assert ("lock_posix_account", ClusterAccount.objects.get(user=gone.user).posix_username) in head_nodes
    event = AuditEvent.objects.get(action="okta.sync")
    assert event.data["applied"] == 6 and event.data["by_action"] == {"add": 5, "remove": 1}
    assert AuditEvent.objects.filter(action="person.offboard", target_id=str(gone.user_id), data__source="idp").exists()
    # A second run finds nothing to do.
    again = run_reconciliation(lab.connection)
    assert again.status == "ok" and again.planned == 0 and again.changes == []


def test_changed_groups_update_the_person_and_a_returning_person_is_reinstated(lab):
    run_reconciliation(lab.connection)
    lab.okta.group("hpc-admins").members.append(lab.people["ann"])  # ann becomes an admin
    lab.okta.group("hpc-users").members.append(lab.okta.user("gone@lab.test"))  # gone comes back
    run = run_reconciliation(lab.connection)
    assert {(c["action"], c["email"]) for c in run.changes} == {("update", "ann@lab.test"), ("reinstate", "gone@lab.test")}
    assert status_of(lab.tenant, "ann@lab.test") == ("active", "admin")
    gone = Membership.objects.get(tenant=lab.tenant, user__email="gone@lab.test")
    assert (gone.status, sorted(gone.idp_groups)) == ("active", ["hpc-users", "wiki"])
    assert ClusterAccount.objects.get(user=gone.user).state == "active"


def test_a_dry_run_reports_the_drift_and_applies_nothing(lab, head_nodes):
    before, calls = snapshot(lab.tenant), len(head_nodes)
    run = run_reconciliation(lab.connection, dry_run=True)
    assert run.status == "ok" and run.dry_run and run.planned == 6 and run.applied == 0
    assert all(c["applied"] is None for c in run.changes)
    assert snapshot(lab.tenant) == before and len(head_nodes) == calls
    # The connection's own mode: scheduled runs of a dry-run connection only report.
    OktaConnection.objects.filter(pk=lab.connection.pk).update(dry_run=True)
    lab.connection.refresh_from_db()
    assert run_reconciliation(lab.connection).dry_run and snapshot(lab.tenant) == before


def test_a_429_waits_until_the_reset_and_the_run_completes(lab):
    lab.okta.fail("/users", 429, skip=1, reset_in=1)  # the second members page
    started = time.monotonic()
    run = run_reconciliation(lab.connection)
    assert run.status == "ok" and run.applied == 6
    assert 0.1 <= run.rate_limit_wait <= 2.5 and time.monotonic() - started >= run.rate_limit_wait
    assert len(lab.okta.member_requests()) == 3 + 1 + 1  # hpc-users' 3 pages, the 429 asked again, hpc-admins


def test_rate_limits_beyond_the_budget_fail_the_run_and_apply_nothing(lab, settings):
    before = snapshot(lab.tenant)
    lab.okta.fail("/users", 429, skip=2, reset_in=120)  # the reset is further than a run waits
    run = run_reconciliation(lab.connection)
    assert run.status == "failed" and "rate limit" in run.error and run.applied == 0
    assert snapshot(lab.tenant) == before
    settings.OKTA_RATE_LIMIT_BUDGET = 1
    lab.okta.fail("/users", 429, times=3, reset_in=1)
    run = run_reconciliation(lab.connection)
    assert run.status == "failed" and "budget" in run.error and snapshot(lab.tenant) == before


def test_a_group_that_disappears_fails_the_run_and_applies_nothing(lab):
    before = snapshot(lab.tenant)
    lab.okta.delete_group("hpc-users")  # its members answer 404: a partial read must not offboard its people
    run = run_reconciliation(lab.connection)
    assert run.status == "failed" and "no longer exists" in run.error and run.applied == 0
    assert snapshot(lab.tenant) == before
    assert status_of(lab.tenant, "stay@lab.test") == ("active", "member")
    # A rule naming a group Okta does not have fails the same way.
    AccessRule.objects.create(tenant=lab.tenant, group="hpc-gpu", role="member")
    run = run_reconciliation(lab.connection)
    assert run.status == "failed" and "no group named 'hpc-gpu'" in run.error and snapshot(lab.tenant) == before


def test_okta_down_or_refusing_applies_nothing(lab, settings):
    settings.OKTA_RETRIES = 1
    before = snapshot(lab.tenant)
    lab.okta.fail("/users", 500, times=5)
    run = run_reconciliation(lab.connection)
    assert run.status == "failed" and "500" in run.error and snapshot(lab.tenant) == before
    lab.okta.faults.clear()
    lab.connection.set_api_token("wrong")
    lab.connection.save()
    run = run_reconciliation(lab.connection)
    assert run.status == "failed" and "refused the credentials (401" in run.error and "okta.groups.read" in run.error
    lab.okta.stop()
    run = run_reconciliation(lab.connection)
    assert run.status == "failed" and "did not answer" in run.error and snapshot(lab.tenant) == before
    assert set(SyncRun.objects.values_list("applied", flat=True)) == {0}


def test_more_removals_than_the_limit_apply_nothing(lab):
    lab.okta.group("hpc-users").members.remove(lab.people["stay"])
    OktaConnection.objects.filter(pk=lab.connection.pk).update(max_removals=1)
    lab.connection.refresh_from_db()
    before = snapshot(lab.tenant)
    run = run_reconciliation(lab.connection)
    assert run.status == "failed" and "would offboard or suspend 2 people, more than the limit of 1" in run.error
    assert snapshot(lab.tenant) == before and {c["email"] for c in run.changes if c["action"] == "remove"} == {"stay@lab.test", "gone@lab.test"}


def test_suspended_and_deactivated_okta_users_and_an_admins_decision(lab):
    from accounts import lifecycle
    run_reconciliation(lab.connection)
    lab.people["ann"]["status"] = "SUSPENDED"
    lab.people["ben"]["status"] = "DEPROVISIONED"
    lifecycle.offboard_person(tenant=lab.tenant, user=User.objects.get(email="cat@lab.test"), actor=None, reason="by hand")
    lifecycle.suspend_person(tenant=lab.tenant, user=User.objects.get(email="dan@lab.test"), actor=None, reason="by hand")
    lab.people["dan"]["status"] = "DEPROVISIONED"
    run = run_reconciliation(lab.connection)
    assert {(c["action"], c["email"]) for c in run.changes} == {("suspend", "ann@lab.test"), ("remove", "ben@lab.test"),
                                                                ("remove", "dan@lab.test")}
    # dan, suspended by an admin and deactivated in Okta, is offboarded: still the admin's decision to undo.
    assert status_of(lab.tenant, "dan@lab.test")[0] == "offboarded"
    assert Membership.objects.get(tenant=lab.tenant, user__email="dan@lab.test").status_source == "admin"
    ann = Membership.objects.get(tenant=lab.tenant, user__email="ann@lab.test")
    assert (ann.status, ann.status_source) == ("suspended", "idp")
    assert status_of(lab.tenant, "ben@lab.test")[0] == "offboarded"
    assert status_of(lab.tenant, "cat@lab.test")[0] == "offboarded"  # an admin's offboarding stands although cat is in the group
    assert run_reconciliation(lab.connection).planned == 0  # still suspended in Okta: not reinstated
    lab.people["ann"]["status"] = "ACTIVE"  # unsuspended in Okta
    run = run_reconciliation(lab.connection)
    assert [(c["action"], c["email"]) for c in run.changes] == [("reinstate", "ann@lab.test")]
    assert status_of(lab.tenant, "ann@lab.test") == ("active", "member")


def test_people_are_matched_by_their_sign_in_link_before_their_email(lab):
    renamed = ensure_user(email="ann.old@lab.test")
    IdentityLink.objects.create(user=renamed, tenant=lab.tenant, issuer=lab.okta.url, subject=lab.people["ann"]["id"])
    run = run_reconciliation(lab.connection)
    ann = next(c for c in run.changes if c["okta_id"] == lab.people["ann"]["id"])
    assert ann["email"] == "ann.old@lab.test" and ann["user_id"] == renamed.pk
    assert not User.objects.filter(email="ann@lab.test").exists()
    assert status_of(lab.tenant, "ann.old@lab.test") == ("active", "member")


def test_two_runs_of_a_tenant_never_overlap(lab, settings):
    held = start_run(lab.connection, dry_run=True, trigger="schedule")
    assert run_reconciliation(lab.connection) is None  # skipped: the other run is going on
    assert lab.okta.requests == []
    SyncRun.objects.filter(pk=held.pk).update(started_at=held.started_at.replace(year=2000))  # its process died long ago
    run = run_reconciliation(lab.connection)
    assert run is not None and run.status == "ok"
    held.refresh_from_db()
    assert held.status == "failed" and "Abandoned" in held.error


def test_links_off_the_org_are_never_followed(lab):
    client = OktaClient(lab.connection)
    with pytest.raises(OktaError, match="off the org"):
        client.get("http://127.0.0.2:9/api/v1/groups")
    assert lab.okta.requests == []


def test_an_oauth_service_app_with_a_private_key_jwt(lab):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    lab.okta.service_app = ("0oa-portal", key.public_key())
    lab.connection.auth_method, lab.connection.client_id, lab.connection.api_token_sealed = "oauth", "0oa-portal", ""
    lab.connection.set_private_key(pem)
    lab.connection.save()
    run = run_reconciliation(lab.connection)
    assert run.status == "ok" and run.applied == 6
    assert lab.okta.requests[0] == "POST /oauth2/v1/token"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    lab.okta.service_app = ("0oa-portal", other.public_key())  # the key in Okta was rotated
    run = run_reconciliation(lab.connection)
    assert run.status == "failed" and "refused the service app's token request (401)" in run.error


def test_beat_queues_each_enabled_tenant(lab, monkeypatch, settings):
    queued = []
    monkeypatch.setattr(tasks.reconcile_tenant, "delay", lambda *a, **k: queued.append(a))
    other = Tenant.objects.create(slug="off", name="Off")
    OktaConnection.objects.create(tenant=other, org_url="https://off.okta.test", enabled=False)
    assert tasks.reconcile_all() == 1 and queued == [(lab.connection.pk,)]
    assert settings.CELERY_BEAT_SCHEDULE["okta-reconcile"] == {"task": "okta.tasks.reconcile_all",
                                                               "schedule": settings.OKTA_SYNC_MINUTES * 60}
    assert tasks.reconcile_tenant(lab.connection.pk, dry_run=True) is not None


def test_manage_py_okta_sync(lab, capsys):
    call_command("okta_sync", "lab", "--dry-run")
    out = capsys.readouterr().out
    assert "Done (dry run)" in out and "6 changes planned, 0 applied" in out and "remove    gone@lab.test" in out
    lab.okta.delete_group("hpc-admins")
    with pytest.raises(CommandError, match="no longer exists"):
        call_command("okta_sync", "lab", "--apply")


# --- the admin console's Okta section --------------------------------------------------------------


@pytest.fixture
def admin_client(lab):
    admin = ensure_user(email="root-admin@lab.test", password=PASSWORD)
    Membership.objects.create(tenant=lab.tenant, user=admin, role="admin")
    client = Client()
    client.force_login(admin)
    return client


def test_console_configures_the_connection_with_write_only_secrets(lab, admin_client):
    base = "/t/lab/admin/okta"
    page = admin_client.get(f"{base}/")
    assert page.status_code == 200 and lab.okta.token not in page.content.decode()
    form = {"org_url": "http://127.0.0.1:1/", "auth_method": "token", "api_token": "", "enabled": "on", "max_removals": "10"}
    assert admin_client.post(f"{base}/save/", form).status_code == 302
    lab.connection.refresh_from_db()
    assert lab.connection.org_url == "http://127.0.0.1:1" and lab.connection.api_token() == lab.okta.token  # blank keeps it
    assert not lab.connection.dry_run and lab.connection.max_removals == 10
    bad = admin_client.post(f"{base}/save/", {**form, "org_url": "http://okta.example.com"})
    assert bad.status_code == 400 and "must be https" in bad.content.decode()
    admin_client.post(f"{base}/save/", {**form, "api_token": "new-token-123"})
    lab.connection.refresh_from_db()
    assert lab.connection.api_token() == "new-token-123"
    trail = str(list(AuditEvent.objects.filter(action__startswith="okta.connection").values_list("data", flat=True)))
    assert "new-token-123" not in trail and "changed" in trail


def test_console_shows_the_hook_secret_once_and_keeps_only_its_hash(lab, admin_client):
    base = "/t/lab/admin/okta"
    made = admin_client.post(f"{base}/hook-secret/", {"action": "new"})
    html = made.content.decode()
    secret = html.split('data-testid="okta-secret-value">')[1].split("<")[0]
    lab.connection.refresh_from_db()
    assert len(secret) >= 40 and lab.connection.hook_secret_matches(secret) and secret not in lab.connection.hook_secret_hash
    assert secret not in admin_client.get(f"{base}/").content.decode()  # never again
    admin_client.post(f"{base}/hook-secret/", {"action": "clear"})
    lab.connection.refresh_from_db()
    assert not lab.connection.hook_secret_matches(secret)


def test_console_runs_now_and_shows_the_runs_drift_and_errors(lab, admin_client, monkeypatch, settings):
    settings.OKTA_RETRIES = 0
    queued = []
    monkeypatch.setattr(tasks.reconcile_tenant, "delay", lambda *a, **k: queued.append((a, k)))
    admin_client.post("/t/lab/admin/okta/run/", {"mode": "dry"})
    admin_client.post("/t/lab/admin/okta/run/", {"mode": "apply"})
    assert [k["dry_run"] for _a, k in queued] == [True, False] and all(k["trigger"] == "admin" for _a, k in queued)
    run = run_reconciliation(lab.connection, dry_run=True, trigger="admin")
    page = admin_client.get("/t/lab/admin/okta/").content.decode()
    assert "gone@lab.test" in page and "dry run" in page and "6 planned, 0 applied" in page
    detail = admin_client.get(f"/t/lab/admin/okta/runs/{run.pk}/").content.decode()
    assert "ann@lab.test" in detail and "in Okta, not in the portal" in detail
    lab.okta.stop()
    run_reconciliation(lab.connection)
    assert "did not answer" in admin_client.get("/t/lab/admin/okta/").content.decode()


def test_console_okta_pages_are_404_for_members_and_outsiders(lab, admin_client):
    member = User.objects.get(email="stay@lab.test")
    client = Client()
    client.force_login(member)
    run = run_reconciliation(lab.connection, dry_run=True)
    for method, path in (("get", "okta/"), ("post", "okta/save/"), ("post", "okta/hook-secret/"), ("post", "okta/run/"),
                         ("get", f"okta/runs/{run.pk}/")):
        assert getattr(client, method)(f"/t/lab/admin/{path}").status_code == 404
    lab.connection.refresh_from_db()
    assert not lab.connection.hook_secret_hash
