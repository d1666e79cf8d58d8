"""Onboarding and offboarding through accounts/lifecycle.py, on this machine as the head node.

Real useradd/usermod/sacctmgr (root, as in CI), real login shells on two daphne processes sharing a
Redis channel layer, and the API and web sessions of the person being offboarded. Each test's people
are throwaway `ct<hex>` POSIX users with uids from a free spot in 62000–62999, removed afterwards.
"""

import asyncio
import contextlib
import os
import pwd
import secrets
import stat
import subprocess

import pytest
from django.core.management import call_command

from accounts import lifecycle
from accounts.models import AccessRule, ApiToken, Membership, Tenant
from accounts.services import create_api_token
from audit.models import AuditEvent
from clusters import provisioning
from clusters.models import ClusterAccount, PosixIdentity
from clusters.posix import AccountLocked, check_posix_account
from clusters.services import ensure_cluster
from terminal.models import TerminalSession
from tests.conftest import wait_for
from tests.multiprocess import two_daphnes
from tests.terminal_client import signed_in_cookie, ws_terminal
from tests.test_provisioning import INSTANCE, REGION, ROLE, remove_user, sh
from tests.test_provisioning import ssm as ssm_peer  # noqa: F401 (fixture: SendCommand answered by a local peer)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="creates real POSIX users with useradd: needs root (CI runs as root)")
pytestmark = [needs_root]


def _free_uid_block(size: int = 20) -> int:
    """The first uid of `size` consecutive uids nobody on this machine has."""
    import random
    taken = {entry.pw_uid for entry in pwd.getpwall()}
    for start in random.sample(range(62000, 62999 - size), 200):
        if not taken.intersection(range(start, start + size)):
            return start
    raise AssertionError("no free uid block in 62000–62999")


@pytest.fixture
def site(db):
    """A tenant with its own uid range, a local cluster whose head node is this machine, and cleanup."""
    start = _free_uid_block()
    tenant = Tenant.objects.create(slug="lab", name="Lab", uid_range_start=start, uid_range_end=start + 19)
    cluster = ensure_cluster(tenant=tenant, slug="hpc", name="Lab HPC")
    made = []

    class Site:
        pass

    s = Site()
    s.tenant, s.cluster = tenant, cluster

    def person(role=Membership.Role.MEMBER, clusters=None):
        email = f"ct{secrets.token_hex(5)}@example.test"
        membership = lifecycle.onboard_person(tenant=tenant, email=email, role=role,
                                              clusters=[cluster] if clusters is None else clusters, actor=None)
        made.append(PosixIdentity.objects.get(tenant=tenant, user=membership.user))
        return membership.user

    s.person = person
    yield s
    for identity in made:
        remove_user(identity.username, identity.uid)


def _account(user, cluster) -> ClusterAccount:
    return ClusterAccount.objects.get(user=user, cluster=cluster)


def test_onboarding_makes_a_posix_account_with_the_allocated_uid_and_a_private_home(site):
    user = site.person()
    account = _account(user, site.cluster)
    assert account.state == "active" and account.head_node_action == "" and account.head_node_error == ""
    entry = pwd.getpwnam(account.posix_username)
    assert entry.pw_uid == account.uid == site.tenant.uid_range_start
    assert entry.pw_dir == f"/home/{account.posix_username}" and entry.pw_shell == "/bin/bash"
    assert stat.S_IMODE(os.stat(entry.pw_dir).st_mode) == 0o700
    assert check_posix_account(account.posix_username, account.uid, need_login_shell=True)
    second = site.person()
    assert _account(second, site.cluster).uid == site.tenant.uid_range_start + 1  # the next uid, never a reused one
    assert AuditEvent.objects.filter(action="cluster_account.head_node.create", target_id=str(account.pk)).exists()


@pytest.mark.slurm
def test_a_new_person_can_submit_jobs_at_once(site, live_slurm):
    slurm_account = "ct" + secrets.token_hex(4)
    site.cluster.slurm_account = slurm_account
    site.cluster.save(update_fields=["slurm_account"])
    try:
        user = site.person()
        name = _account(user, site.cluster).posix_username
        home = pwd.getpwnam(name).pw_dir
        out = sh("runuser", "-u", name, "--", "sbatch", "--parsable", f"--chdir={home}", "--wrap", "true", cwd=home)
        assert out.returncode == 0, out.stderr
        assocs = sh("sacctmgr", "-nP", "show", "assoc", f"user={name}", "format=account").stdout.split()
        assert slurm_account in assocs
    finally:
        sh("sacctmgr", "-i", "delete", "user", name)
        sh("sacctmgr", "-i", "delete", "account", slurm_account)


def test_onboarding_twice_changes_nothing_and_a_taken_name_gets_a_numbered_variant(site):
    user = site.person()
    account = _account(user, site.cluster)
    again = lifecycle.onboard_person(tenant=site.tenant, email=user.email, role="member", clusters=[site.cluster], actor=None)
    assert again.user == user and _account(user, site.cluster).pk == account.pk
    assert PosixIdentity.objects.filter(tenant=site.tenant, user=user).count() == 1
    # Someone else whose email has the same local part.
    twin = f"{account.posix_username}@elsewhere.test"
    membership = lifecycle.onboard_person(tenant=site.tenant, email=twin, role="member", clusters=[site.cluster], actor=None)
    twin_identity = PosixIdentity.objects.get(tenant=site.tenant, user=membership.user)
    try:
        assert twin_identity.username == f"{account.posix_username}2"
        assert pwd.getpwnam(twin_identity.username).pw_uid == twin_identity.uid
    finally:
        remove_user(twin_identity.username, twin_identity.uid)


def test_a_head_node_failure_leaves_a_visible_pending_account_that_is_retried(site, monkeypatch):
    real = provisioning.create_posix_account
    calls = []

    def flaky(cluster, **kwargs):
        calls.append(kwargs["username"])
        if len(calls) == 1:
            raise provisioning.ProvisioningError("The head node did not answer within 30 s.", retryable=True)
        return real(cluster, **kwargs)

    monkeypatch.setattr(provisioning, "create_posix_account", flaky)
    user = site.person()
    account = _account(user, site.cluster)
    assert account.state == "pending" and account.head_node_action == "create"
    assert "did not answer" in account.head_node_error and account.head_node_attempts == 1
    assert account.head_node_retry_at is not None
    assert lifecycle.retry_head_node_work() == 0  # not due yet: backoff
    ClusterAccount.objects.filter(pk=account.pk).update(head_node_retry_at=account.head_node_retry_at.replace(year=2000))
    assert lifecycle.retry_head_node_work() == 1
    account.refresh_from_db()
    assert account.state == "active" and account.head_node_error == "" and account.head_node_retry_at is None
    assert pwd.getpwnam(account.posix_username).pw_uid == account.uid


def test_a_refused_name_is_not_retried(site):
    site.cluster.home_template = "/tmp/{username}"  # the helper refuses homes under a world-writable directory
    site.cluster.save(update_fields=["home_template"])
    user = site.person()
    account = _account(user, site.cluster)
    assert account.state == "pending" and account.head_node_error and account.head_node_retry_at is None
    with pytest.raises(KeyError):
        pwd.getpwnam(account.posix_username)


def _start_process_as(name: str) -> subprocess.Popen:
    return subprocess.Popen(["runuser", "-u", name, "--", "sleep", "1007"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_offboarding_revokes_everything_and_locks_the_account_and_reinstating_restores_it(site, client):
    user = site.person()
    account = _account(user, site.cluster)
    _token, token_text = create_api_token(user=user, tenant=site.tenant, name="cli")
    client.force_login(user)
    assert client.get("/").status_code == 200
    sleeper = _start_process_as(account.posix_username)
    try:
        wait_for(lambda: sh("pgrep", "-U", str(account.uid)).returncode == 0, 10, "the person's process")
        report = lifecycle.offboard_person(tenant=site.tenant, user=user, actor=None, reason="left the lab")
        assert report.clusters_locked == ["hpc"] and report.clusters_pending == {} and report.tokens_revoked == 1
        assert sleeper.wait(10) == 128 + 9  # SIGKILLed (runuser reports its child's signal): the tenant's policy
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
    account.refresh_from_db()
    assert account.state == "revoked" and account.head_node_action == ""
    with pytest.raises(AccountLocked):
        check_posix_account(account.posix_username, account.uid)
    assert client.get("/").status_code == 302  # the web session is gone
    api = client.get("/v1/clusters", HTTP_AUTHORIZATION=f"Bearer {token_text}")
    assert api.status_code == 401
    assert ApiToken.objects.get(user=user).revoked_at is not None
    membership = Membership.objects.get(tenant=site.tenant, user=user)
    assert (membership.status, membership.status_source) == ("offboarded", "admin")
    event = AuditEvent.objects.get(action="person.offboard", target_id=str(user.pk))
    assert event.data["reason"] == "left the lab" and event.data["clusters"] == ["hpc"]

    lifecycle.reinstate_person(tenant=site.tenant, user=user, actor=None)
    account.refresh_from_db()
    assert account.state == "active"
    entry = check_posix_account(account.posix_username, account.uid)
    assert entry.pw_dir == f"/home/{account.posix_username}"  # same uid, same home


def test_offboarding_goes_on_when_a_head_node_does_not_answer(site, monkeypatch):
    second = ensure_cluster(tenant=site.tenant, slug="gpu", name="Lab GPU")
    user = site.person(clusters=[site.cluster, second])
    real = provisioning.lock_posix_account

    def gpu_down(cluster, **kwargs):
        if cluster.slug == "gpu":
            raise provisioning.ProvisioningError("The head node gpu did not answer.", retryable=True)
        return real(cluster, **kwargs)

    monkeypatch.setattr(provisioning, "lock_posix_account", gpu_down)
    report = lifecycle.offboard_person(tenant=site.tenant, user=user, actor=None, reason="contract ended")
    assert report.clusters_locked == ["hpc"] and list(report.clusters_pending) == ["gpu"]
    gpu = _account(user, second)
    assert gpu.state == "revoked" and gpu.head_node_action == "lock" and gpu.head_node_retry_at is not None
    monkeypatch.setattr(provisioning, "lock_posix_account", real)
    ClusterAccount.objects.filter(pk=gpu.pk).update(head_node_retry_at=gpu.head_node_retry_at.replace(year=2000))
    assert lifecycle.retry_head_node_work() == 1
    gpu.refresh_from_db()
    assert gpu.head_node_action == "" and gpu.head_node_error == ""


def test_manage_py_offboard_prints_what_it_did(site, capsys):
    user = site.person()
    call_command("offboard", user.email, "--reason", "left")
    out = capsys.readouterr().out
    assert f"Offboarded {user.email} from lab: left (manage.py offboard)" in out
    assert "hpc: POSIX account locked on the head node" in out
    assert Membership.objects.get(user=user).status == "offboarded"


def test_group_rules_grant_and_take_clusters(site):
    from accounts.access import evaluate_access
    gpu = ensure_cluster(tenant=site.tenant, slug="gpu", name="Lab GPU")
    rule = AccessRule.objects.create(tenant=site.tenant, group="lab-gpu", role="member")
    rule.clusters.set([gpu])
    user = site.person(clusters=[])
    claims = {"email": user.email, "sub": "x"}
    decision = evaluate_access(site.tenant, ["lab-gpu", "not-a-rule"], user=user, claims=claims)
    assert decision.unknown_groups == ["not-a-rule"] and [c.slug for c in decision.clusters] == ["gpu"]
    lifecycle.apply_access(tenant=site.tenant, user=user, decision=decision, groups=["lab-gpu", "not-a-rule"])
    assert _account(user, gpu).state == "active"
    nothing = evaluate_access(site.tenant, ["lab-users"], user=user, claims=claims)
    assert not nothing.grants_access
    rule2 = AccessRule.objects.create(tenant=site.tenant, group="lab-users", role="member")
    decision = evaluate_access(site.tenant, ["lab-users"], user=user, claims=claims)
    lifecycle.apply_access(tenant=site.tenant, user=user, decision=decision, groups=["lab-users"])
    assert _account(user, gpu).state == "revoked"  # the rule's cluster is gone with the group
    assert rule2.pk


@pytest.mark.slow
def test_offboarding_ends_a_live_terminal_held_by_the_other_daphne(site, transactional_db, tmp_path, settings, redis_layer):
    import requests
    user = site.person()
    cookie = signed_in_cookie(user)
    _token, token_text = create_api_token(user=user, tenant=site.tenant, name="cli")
    with two_daphnes(tmp_path, settings, redis_layer.url) as (one, two):
        web = requests.Session()
        web.cookies.set("sessionid", cookie)
        api = {"Authorization": f"Bearer {token_text}"}
        assert web.get(f"{two}/", allow_redirects=False, timeout=30).status_code == 200
        assert requests.get(f"{two}/v1/clusters", headers=api, timeout=30).status_code == 200

        async def scenario():
            async with contextlib.AsyncExitStack() as stack:
                held = [await stack.enter_async_context(ws_terminal(server, cookie, "/ws/t/lab/c/hpc/terminal/?cols=80&rows=24"))
                        for server in (one, two)]
                for i, t in enumerate(held):
                    await t.run(f"echo alive-''{i}".encode(), f"alive-{i}\r\n".encode())
                report = await asyncio.to_thread(lifecycle.offboard_person, tenant=site.tenant, user=user, actor=None,
                                                 reason="left")
                assert len(report.sessions_ended) == 2
                for t in held:
                    ended = await t.status("exit", timeout=10)
                    assert ended["reason"] == "revoked", ended
                def finished():
                    rows = list(TerminalSession.objects.filter(user=user))
                    return all(r.ended_at for r in rows) and rows

                rows = await asyncio.to_thread(wait_for, finished, 10, "both rows finished")
                assert {r.end_reason for r in rows} == {"revoked"}

        asyncio.run(scenario())
        # The person's web session and API token stop working on every process.
        for server in (one, two):
            assert web.get(f"{server}/", allow_redirects=False, timeout=30).status_code == 302
            assert requests.get(f"{server}/v1/clusters", headers=api, timeout=30).status_code == 401


@pytest.mark.slow
@pytest.mark.usefixtures("ssm_peer")
def test_onboarding_to_an_ssm_cluster_is_queued_for_a_celery_worker(site, monkeypatch, django_capture_on_commit_callbacks):
    """SSM head nodes answer in seconds: the grant is recorded pending and a Celery task runs the SendCommand."""
    from accounts import tasks
    cloud = ensure_cluster(tenant=site.tenant, slug="cloud", name="Lab cloud", backend="ssm",
                           backend_settings={"region": REGION, "instance_id": INSTANCE, "role_arn": ROLE})
    queued = []
    monkeypatch.setattr(tasks.head_node_work, "delay", queued.append)
    with django_capture_on_commit_callbacks(execute=True):
        user = site.person(clusters=[cloud])
    account = _account(user, cloud)
    assert account.state == "pending" and account.head_node_action == "create" and queued == [account.pk]
    assert tasks.head_node_work(account.pk) is True  # what the worker runs
    account.refresh_from_db()
    assert account.state == "active" and pwd.getpwnam(account.posix_username).pw_uid == account.uid


def test_sync_groups_onboards_and_offboards_a_person_who_never_signed_in(site):
    from accounts.services import ensure_user
    rule = AccessRule.objects.create(tenant=site.tenant, group="lab-users", role="member")
    rule.clusters.set([site.cluster])
    user = ensure_user(email=f"ct{secrets.token_hex(5)}@example.test")
    try:
        membership = lifecycle.sync_groups(tenant=site.tenant, user=user, groups=["lab-users", "other"], source="scim")
        assert membership.status == "active" and membership.idp_groups == ["lab-users", "other"]
        account = _account(user, site.cluster)
        assert account.state == "active" and pwd.getpwnam(account.posix_username).pw_uid == account.uid
        assert lifecycle.sync_groups(tenant=site.tenant, user=user, groups=[], source="scim") is None
        membership.refresh_from_db()
        assert (membership.status, membership.status_source) == ("offboarded", "idp")
        with pytest.raises(AccountLocked):
            check_posix_account(account.posix_username, account.uid)
    finally:
        identity = PosixIdentity.objects.filter(user=user).first()
        if identity is not None:
            remove_user(identity.username, identity.uid)


def test_uid_allocation_skips_uids_already_used_on_the_local_head_node(site):
    from accounts.access import next_free_uid
    holder = "ct" + secrets.token_hex(5)
    taken = site.tenant.uid_range_start
    out = sh("useradd", "--uid", str(taken), "--no-create-home", "--shell", "/usr/sbin/nologin", holder)
    assert out.returncode == 0, out.stderr
    try:
        assert next_free_uid(site.tenant) == taken + 1
        user = site.person()
        assert _account(user, site.cluster).uid == taken + 1 and _account(user, site.cluster).state == "active"
    finally:
        sh("userdel", holder)
