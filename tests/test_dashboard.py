"""The dashboard (clusters/dashboard.py, templates/clusters/home.html) and the quotas behind it (clusters/quotas.py).

Parsers run on output captured from the local Slurm 22.05 (scripts/slurm-local.sh) and GNU df; collection runs
the real commands as the account's POSIX user against that Slurm; the page is checked never to run a command.
"""

import asyncio
import os
import secrets
import subprocess
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import Membership
from accounts.services import ensure_user, set_membership
from clusters import dashboard, quotas, tasks
from clusters.executors import CommandResult, CommandTimeout, LocalExecutor, SsmExecutor
from clusters.models import AccountUsage, ClusterAccount
from clusters.services import map_account
from jobs.models import Job
from terminal import actions
from terminal.models import TerminalSession

# --- output captured from the local Slurm (user ch3cap in two throwaway accounts; PriorityType=priority/basic) --
SACCTMGR_OUT = (
    "clusterra|ch3capb|ch3cap|batch|1||||||||||||01:30:00|normal|\n"
    "clusterra|ch3capa|ch3cap||5|30|50|cpu=16,mem=64G|cpu=60000||4-04:00:00|10|20|cpu=4,mem=8G|cpu=2|cpu=1440|2-00:00:00|normal|\n"
)
_ZERO_TRES = "cpu=0,mem=0,energy=0,node=0,billing=0,fs/disk=0,vmem=0,pages=0"
SSHARE_OUT = (
    f"root|||||0|0.000000|||{_ZERO_TRES}|{_ZERO_TRES}\n"
    f" ch3capa|||1||0|0.000000|||{_ZERO_TRES}|{_ZERO_TRES}\n"
    f"  ch3capa|ch3cap||5||0|0.000000|0.000000|cpu=60000|{_ZERO_TRES}|{_ZERO_TRES}\n"
    f" ch3capb|||1||0|0.000000|||{_ZERO_TRES}|{_ZERO_TRES}\n"
    f"  ch3capb|ch3cap|batch|1||0|0.000000|0.000000||{_ZERO_TRES}|{_ZERO_TRES}\n"
)
# The same sshare as a user without an association: the account tree, no line of theirs.
SSHARE_NO_ASSOC_OUT = (
    f"root|||||0|0.000000|||{_ZERO_TRES}|{_ZERO_TRES}\n"
    f" ch3capa|||1||0|0.000000|||{_ZERO_TRES}|{_ZERO_TRES}\n"
)
DF_OUT = (
    "Filesystem         1-blocks        Used   Available Capacity Mounted on\n"
    "/dev/vda       270553174016 24882749440 84061544448      23% /\n"
    "/dev/vda       270553174016 24889638912 84054654976      23% /\n"
)
DF_ERR = "df: /nonexistent: No such file or directory\n"


def quota_line(mount, blocks, soft, hard, grace, files, over=" "):
    """A line as quota-tools 4.06 prints it with -w -p --show-mntpoint --hide-device (quota.c, showquotas():
    "%15s" then " %7s%c %6s %7s %7s" for space and files). No filesystem here has quotas (the test machine cannot
    mount one), so this follows the source's printf formats rather than a captured run."""
    return f"{mount:>15s} {blocks:>7}{over} {soft:>6} {hard:>7} {grace:>7} {files:>7}  {0:>6} {0:>7} {0:>7}\n"


QUOTA_OUT = (
    "Disk quotas for user ch3cap (uid 1004): \n"
    f"{'Filesystem':>15s}{'blocks':>8} {'quota':>7}{'limit':>8}{'grace':>8}{'files':>8} {'quota':>7}{'limit':>8}{'grace':>8}\n"
    + quota_line("/home", 5242880, 4194304, 6291456, 1767225600, 1200, over="*")
    + quota_line("/scratch space", 10, 0, 0, 0, 3)
)


# --- parsers ----------------------------------------------------------------------------------------
def test_associations_from_sacctmgr():
    assocs = quotas.parse_associations(SACCTMGR_OUT.encode(), "ch3cap")
    assert [(a["account"], a["partition"]) for a in assocs] == [("ch3capa", ""), ("ch3capb", "batch")]
    limits = assocs[0]["limits"]
    assert limits == {"GrpJobs": "30", "GrpSubmit": "50", "GrpTRES": "cpu=16,mem=64G", "GrpTRESMins": "cpu=60000",
                      "GrpWall": "4-04:00:00", "MaxJobs": "10", "MaxSubmit": "20", "MaxTRES": "cpu=4,mem=8G",
                      "MaxTRESPerNode": "cpu=2", "MaxTRESMins": "cpu=1440", "MaxWall": "2-00:00:00"}
    assert assocs[1]["limits"] == {"MaxWall": "01:30:00"} and assocs[1]["qos"] == ["normal"]
    assert quotas.parse_associations(SACCTMGR_OUT, "someone-else") == []


def test_fairshare_from_sshare_is_none_where_slurm_does_not_compute_it():
    shares = quotas.parse_sshare(SSHARE_OUT.encode(), "ch3cap")
    assert set(shares) == {("ch3capa", ""), ("ch3capb", "batch")}  # the account lines are not the user's
    a = shares[("ch3capa", "")]
    assert a["raw_shares"] == "5" and a["norm_shares"] is None and a["tres_mins_used"]["cpu"] == "0"
    assert a["fairshare"] is None  # priority/basic prints FairShare 0.000000 with an empty NormShares
    assert quotas.parse_sshare(SSHARE_NO_ASSOC_OUT, "ch3cap") == {}
    # The same line as priority/multifactor prints it (the columns filled in): the factor is read.
    computed = "  ch3capa|ch3cap||5|0.833333|1234|0.250000|0.707107|cpu=60000|cpu=120,mem=0|cpu=0\n"
    share = quotas.parse_sshare(computed, "ch3cap")[("ch3capa", "")]
    assert share["fairshare"] == pytest.approx(0.707107) and share["tres_mins_used"] == {"cpu": "120", "mem": "0"}


def test_df_lines_and_the_directories_df_could_not_read():
    lines = quotas.parse_df(DF_OUT.encode())
    assert lines[0] == quotas.DfLine("/dev/vda", 270553174016, 24882749440, 84061544448, "/")
    assert quotas.df_failures(DF_ERR, ["/home/x", "/nonexistent"]) == {"/nonexistent": "No such file or directory"}
    rows = quotas.storage_rows([("/home/x", "home"), ("/nonexistent", "shared"), ("/tmp", "shared")], lines,
                               {"/nonexistent": "No such file or directory"}, [])
    assert [r["error"] for r in rows] == ["", "No such file or directory", ""]
    assert rows[0]["source"] == "filesystem" and rows[0]["used"] == 24882749440 and rows[0]["limit"] == 270553174016
    with pytest.raises(quotas.CollectError):  # two lines for three readable directories: whose is whose?
        quotas.storage_rows([("/a", "home"), ("/b", "shared"), ("/c", "shared")], lines, {}, [])


def test_quota_lines_win_over_the_filesystem_where_a_limit_is_set():
    lines = quotas.parse_quota(QUOTA_OUT)
    assert lines[0] == quotas.QuotaLine("/home", 5242880 * 1024, 4194304 * 1024, 6291456 * 1024, 1767225600, 1200, 0, 0)
    assert lines[1].mounted_on == "/scratch space" and not lines[1].limited
    assert quotas.parse_quota("") == [] and quotas.parse_quota("Disk quotas for user u (uid 1001): none\n") == []
    df = [quotas.DfLine("srv:/home", 10**13, 10**12, 9 * 10**12, "/home"),
          quotas.DfLine("/dev/sdb", 10**12, 10**9, 10**12, "/scratch space")]
    home, scratch = quotas.storage_rows([("/home/ch3cap", "home"), ("/scratch space/ch3cap", "shared")], df, {}, lines)
    assert home["source"] == "quota" and home["used"] == 5242880 * 1024 and home["limit"] == 6291456 * 1024
    assert scratch["source"] == "filesystem" and scratch["limit"] == 10**12  # quotas on, but none set for the user


def test_limits_read_in_slurm_formats_and_words():
    view = dashboard.association_view({**quotas.parse_associations(SACCTMGR_OUT, "ch3cap")[0],
                                       "fairshare": quotas.parse_sshare(SSHARE_OUT, "ch3cap")[("ch3capa", "")]})
    limits = dict(view["limits"])
    assert limits["Time limit per job"] == "2-00:00:00" and limits["Wall time of running jobs together"] == "4-04:00:00"
    assert limits["Resources per job"] == "4 CPUs, 8G memory"
    assert limits["Total resource-time"] == "60,000 CPU-minutes (1,000 CPU-hours)"
    assert limits["Resource-time per job"] == "1,440 CPU-minutes (24 CPU-hours)"
    assert [(b.used, b.limit, b.percent) for b in view["bars"]] == [(0.0, 60000.0, 0)]
    assert view["fairshare"] is None and view["title"] == "Slurm account ch3capa"
    short = dashboard.association_view(quotas.parse_associations(SACCTMGR_OUT, "ch3cap")[1])
    assert dict(short["limits"]) == {"Time limit per job": "1:30:00"}  # sacctmgr's 01:30:00 as Slurm writes limits


# --- collection against the live Slurm ----------------------------------------------------------------
def sh(*argv):
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60)


class RecordingExecutor(LocalExecutor):
    """The real local executor, noting who ran what."""

    def __init__(self):
        self.calls = []

    def run(self, account, argv, **kwargs):
        self.calls.append((account.posix_username, argv[0], kwargs.get("timeout")))
        return super().run(account, argv, **kwargs)


@pytest.fixture
def slurm_association(slurm_cast):
    """alice's POSIX user in a throwaway Slurm account with limits (accounting enforces nothing here)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to add Slurm associations")
    account = "ch3" + secrets.token_hex(4)
    user = slurm_cast.alice_account.posix_username
    assert sh("sacctmgr", "-i", "add", "account", account).returncode == 0
    added = sh("sacctmgr", "-i", "add", "user", user, f"account={account}", "MaxWall=2-00:00:00", "MaxJobs=7",
               "GrpTRESMins=cpu=60000", "MaxTRES=cpu=4,mem=8G")
    assert added.returncode == 0, added.stderr
    yield account
    sh("sacctmgr", "-i", "delete", "user", user, f"account={account}")
    sh("sacctmgr", "-i", "delete", "account", account)


@pytest.fixture
def private_root(tmp_path):
    """A shared root only root can reach: df fails there for every other user."""
    outer = tmp_path / "private"
    (outer / "inner").mkdir(parents=True)
    outer.chmod(0o700)
    return str(outer / "inner")


@pytest.mark.slurm
def test_collection_runs_as_the_user_and_stores_limits_and_storage(slurm_cast, slurm_association, private_root, settings):
    cluster = slurm_cast.hpc
    cluster.shared_roots = ["/tmp", private_root]
    cluster.save()
    account = ClusterAccount.objects.select_related("cluster").get(pk=slurm_cast.alice_account.pk)
    executor = RecordingExecutor()
    usage = quotas.collect(account, executor)

    user = account.posix_username
    assert {(who, program) for who, program, _ in executor.calls} == {(user, p) for p in ("sacctmgr", "sshare", "df", "quota")}
    assert all(timeout == settings.QUOTA_COMMAND_TIMEOUT for *_, timeout in executor.calls)
    [assoc] = usage.associations
    assert assoc["account"] == slurm_association and assoc["limits"]["MaxWall"] == "2-00:00:00"
    assert assoc["limits"]["MaxJobs"] == "7" and assoc["limits"]["GrpTRESMins"] == "cpu=60000"
    assert assoc["fairshare"]["raw_shares"] == "1"  # sshare's line of this association was found
    home, tmp, private = usage.storage
    assert home["path"] == cluster.home_directory(user) and home["kind"] == "home" and home["error"] == ""
    stat = os.statvfs(home["path"])
    assert home["source"] == "filesystem" and home["limit"] == stat.f_blocks * stat.f_frsize and 0 < home["used"] < home["limit"]
    assert tmp["path"] == "/tmp" and tmp["error"] == ""
    assert private["error"] == "Permission denied"  # df ran as the user, not as root
    assert usage.collected_at and usage.error == ""

    page = signed_in(slurm_cast.alice).get("/").content.decode()
    assert "Time limit per job" in page and "2-00:00:00" in page and "60,000 CPU-minutes (1,000 CPU-hours)" in page
    assert "Fair-share" in page and "not computed on this cluster" in page
    assert home["path"] in page and "Permission denied" in page

    # bob's POSIX user has no association: collected all the same, and said so.
    bob = quotas.collect(ClusterAccount.objects.select_related("cluster").get(pk=slurm_cast.bob_account.pk))
    assert bob.associations == [] and bob.storage[0]["error"] == "" and bob.error == ""
    assert "No Slurm association for" in signed_in(slurm_cast.bob).get("/").content.decode()


@pytest.fixture
def eager_celery():
    """Tasks run where they are queued, and an error escaping one stops the caller (as a test failure)."""
    from clusterra.celery import app

    before = {key: app.conf[key] for key in ("task_always_eager", "task_eager_propagates")}
    app.conf.update(task_always_eager=True, task_eager_propagates=True)
    yield
    app.conf.update(before)


@pytest.mark.slurm
def test_a_failing_account_stops_nobody_else(slurm_cast, eager_celery, monkeypatch):
    dave = ensure_user(email="dave@acme.test")
    eve = ensure_user(email="eve@acme.test")
    for person in (dave, eve):
        set_membership(tenant=slurm_cast.acme, user=person, role=Membership.Role.MEMBER)
    # dave maps to a POSIX user the head node does not have; collecting eve's hits a bug.
    ghost = map_account(cluster=slurm_cast.hpc, user=dave, posix_username="ch3-no-such-user", uid=64999)
    broken = map_account(cluster=slurm_cast.hpc, user=eve, posix_username=slurm_cast.posix.pw_name, uid=slurm_cast.posix.pw_uid)
    real_collect = quotas.collect

    def collect(account, executor=None):
        if account.pk == broken.pk:
            raise RuntimeError("a bug")
        return real_collect(account, executor)

    monkeypatch.setattr(quotas, "collect", collect)
    # dave and eve come first in the loop, so the others are collected after their failures.
    monkeypatch.setattr(quotas, "due_accounts", lambda: ClusterAccount.objects.filter(
        state="active", cluster__poll_uid__isnull=False).select_related("cluster").order_by("-pk"))
    assert tasks.collect_quotas_due() == 4

    usage = {u.account_id: u for u in AccountUsage.objects.all()}
    assert "ch3-no-such-user" in usage[ghost.pk].error and usage[ghost.pk].collected_at is None
    assert usage[broken.pk].error.startswith("The portal failed") and usage[broken.pk].collected_at is None
    for ok in (slurm_cast.alice_account, slurm_cast.bob_account):
        assert usage[ok.pk].collected_at is not None and usage[ok.pk].error == "" and usage[ok.pk].storage
    page = signed_in(dave).get("/").content.decode()
    assert "Not collected yet" in page and "ch3-no-such-user" in page


def test_a_failed_part_keeps_its_last_values(cast, monkeypatch):
    account = ClusterAccount.objects.select_related("cluster").get(cluster=cast.hpc, user=cast.bob)
    AccountUsage.objects.create(account=account, associations=[{"account": "old", "partition": "", "limits": {}}],
                                storage=[], collected_at=timezone.now() - timedelta(hours=1))

    class SlurmDown(LocalExecutor):
        def run(self, account, argv, **kwargs):
            if argv[0] in ("sacctmgr", "sshare"):
                return CommandResult(tuple(argv), 1, b"", b"sacctmgr: error: Problem talking to the database: "
                                            b"Connection refused", 0.1)
            return super().run(account, argv, **kwargs)

    usage = quotas.collect(account, SlurmDown())
    assert usage.associations == [{"account": "old", "partition": "", "limits": {}}]  # kept
    assert usage.storage and usage.storage[0]["error"] == ""  # df still worked
    assert usage.error.startswith("Slurm limits (sacctmgr): sacctmgr: error: Problem talking to the database")
    assert usage.collected_at > timezone.now() - timedelta(minutes=1)


def test_missing_directories_and_a_hanging_quota_do_not_lose_the_rest(cast):
    cast.hpc.home_template = "/nonexistent-h3/{username}"
    cast.hpc.shared_roots = ["/tmp", "/also-missing-h3"]
    cast.hpc.save()
    account = ClusterAccount.objects.select_related("cluster").get(cluster=cast.hpc, user=cast.bob)

    class QuotaHangs(LocalExecutor):
        def run(self, account, argv, **kwargs):
            if argv[0] == "quota":
                raise CommandTimeout("quota did not finish within 30 s.")
            if argv[0] in ("sacctmgr", "sshare"):
                return CommandResult(tuple(argv), 0, b"", b"", 0.1)  # no association
            return super().run(account, argv, **kwargs)

    usage = quotas.collect(account, QuotaHangs())  # real df on real (missing) directories
    home, tmp, missing = usage.storage
    assert home["error"] == missing["error"] == "No such file or directory"
    assert tmp["error"] == "" and tmp["source"] == "filesystem" and tmp["limit"] > 0
    assert usage.error == "quota: quota did not finish within 30 s." and usage.collected_at is not None
    cast.hpc.shared_roots = ["/also-missing-h3"]
    cast.hpc.save()
    account.cluster.refresh_from_db()
    usage = quotas.collect(account, QuotaHangs())  # every directory missing: rows that say so, no failure
    assert [row["error"] for row in usage.storage] == ["No such file or directory"] * 2


# --- the page --------------------------------------------------------------------------------------------
def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def job(cluster, owner, job_id, *, state="RUNNING", minutes_ago=10, **fields):
    now = timezone.now()
    in_queue = state in ("PENDING", "RUNNING", "COMPLETING")
    return Job.objects.create(
        cluster=cluster, owner=owner, job_id=job_id, posix_user=owner.posix_username, name=f"run-{job_id}",
        partition="batch", state=state, in_queue=in_queue, submit_time=now - timedelta(minutes=minutes_ago),
        start_time=now - timedelta(minutes=minutes_ago), end_time=None if in_queue else now - timedelta(minutes=1),
        time_limit=2 * 86400, last_seen_at=now, **{"exit_code": None if in_queue else 0, **fields})


@pytest.fixture
def world(cast):
    """bob's jobs, sessions and quotas on acme's cluster; charlie's on the other tenant's."""
    cast.bob_account = ClusterAccount.objects.get(cluster=cast.hpc, user=cast.bob)
    cast.charlie_account = ClusterAccount.objects.get(cluster=cast.other_hpc, user=cast.charlie)
    job(cast.hpc, cast.bob_account, "5001", state="RUNNING", minutes_ago=30)
    job(cast.hpc, cast.bob_account, "5002", state="PENDING", minutes_ago=5, reason="Priority")
    job(cast.hpc, cast.bob_account, "4990", state="FAILED", minutes_ago=60, exit_code=2)
    job(cast.other_hpc, cast.charlie_account, "8801", state="RUNNING")
    for user in (cast.bob, cast.charlie):
        actions.open_terminal_session(user=user, tenant_slug="acme" if user == cast.bob else "other", cluster_slug="hpc",
                                      working_directory=None, client_address="127.0.0.1", user_agent="pytest")
    AccountUsage.objects.create(
        account=cast.bob_account, collected_at=timezone.now() - timedelta(minutes=3),
        associations=[{"cluster": "clusterra", "account": "acme-lab", "partition": "", "qos": ["normal"],
                       "limits": {"MaxWall": "2-00:00:00"}, "fairshare": None}],
        storage=[{"path": "/home/bob", "kind": "home", "source": "filesystem", "used": 25 * 2**30, "limit": 100 * 2**30,
                  "mounted_on": "/", "error": ""}])
    AccountUsage.objects.create(
        account=cast.charlie_account, collected_at=timezone.now(),
        associations=[{"cluster": "clusterra", "account": "other-secret-lab", "partition": "", "qos": [], "limits": {}}],
        storage=[{"path": "/home/charlie-private", "kind": "home", "source": "filesystem", "used": 1, "limit": 2,
                  "mounted_on": "/", "error": ""}])
    return cast


def test_dashboard_shows_clusters_jobs_sessions_and_quotas(world):
    page = signed_in(world.bob).get("/").content.decode()
    assert "Acme HPC" in page
    running = page.index("Running and queued")
    finished = page.index("Recently finished")
    assert running < page.index(">5002<") < page.index(">5001<") < finished < page.index(">4990<")  # newest first
    assert '/t/acme/c/hpc/jobs/5001/' in page and "2-00:00:00" in page
    assert "exit code 2" in page
    assert "As of 3 minutes ago." in page and "acme-lab" in page and "/home/bob" in page
    assert "25.0\xa0GB of 100.0\xa0GB" in page
    session = TerminalSession.objects.get(user=world.bob)
    assert f"?attach={session.pk}" in page and ">live" in page and "Open here" in page


def test_other_tenants_clusters_jobs_sessions_and_quotas_are_absent(world):
    page = signed_in(world.bob).get("/").content.decode()
    charlie_session = TerminalSession.objects.get(user=world.charlie)
    for secret in ("Other HPC", "8801", "run-8801", str(charlie_session.pk), "other-secret-lab", "/home/charlie-private"):
        assert secret not in page
    page = signed_in(world.charlie).get("/").content.decode()
    assert "Other HPC" in page and "8801" in page and str(charlie_session.pk) in page
    for secret in ("Acme HPC", "5001", "acme-lab", "/home/bob", str(TerminalSession.objects.get(user=world.bob).pk)):
        assert secret not in page


def test_a_suspended_membership_hides_that_tenants_clusters(world):
    Membership.objects.filter(user=world.bob, tenant=world.acme).update(status=Membership.Status.SUSPENDED)
    page = signed_in(world.bob).get("/").content.decode()
    assert "Acme HPC" not in page and "5001" not in page and "acme-lab" not in page


def test_the_page_never_runs_a_command(world, monkeypatch):
    ran = []

    def refuse(self, account, argv, **kwargs):
        ran.append(argv)
        raise AssertionError("the dashboard ran a command")

    monkeypatch.setattr(LocalExecutor, "run", refuse)
    monkeypatch.setattr(SsmExecutor, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: ran.append(a) or (_ for _ in ()).throw(AssertionError))
    monkeypatch.setattr(os, "posix_spawn", lambda *a, **k: ran.append(a) or (_ for _ in ()).throw(AssertionError))
    AccountUsage.objects.filter(account=world.bob_account).delete()  # nothing cached: still no command
    response = signed_in(world.bob).get("/")
    assert response.status_code == 200 and ran == []
    assert "Not collected yet." in response.content.decode()


def test_queries_do_not_grow_with_the_jobs(world, django_assert_max_num_queries):
    client = signed_in(world.bob)
    client.get("/")  # warm: the session, the user
    with django_assert_max_num_queries(20) as few:
        client.get("/")
    for i in range(40):
        job(world.hpc, world.bob_account, str(6000 + i), state="COMPLETED" if i % 2 else "RUNNING", minutes_ago=i)
    with django_assert_max_num_queries(len(few.captured_queries)):
        page = client.get("/").content.decode()
    assert page.count('class="dashboard-job"') == 2 * dashboard.JOBS_SHOWN  # bounded lists


def test_a_detached_session_says_how_long_it_stays_reattachable(world, monkeypatch):
    session = TerminalSession.objects.get(user=world.bob)
    actions.record_detach(session, grace=90)
    session.refresh_from_db()
    assert session.is_detached and session.reattach_until - session.detached_at == timedelta(seconds=90)
    frozen = session.detached_at + timedelta(seconds=15)
    monkeypatch.setattr("terminal.models.timezone.now", lambda: frozen)
    expected = "detached, reattachable for 1 minute 15 seconds"
    assert session.live_state == expected

    page = signed_in(world.bob).get("/").content.decode()
    assert expected in page and "Reattach" in page and ">live" not in page
    assert expected in signed_in(world.alice).get("/t/acme/sessions/").content.decode()  # the admin's list
    assert expected in signed_in(world.bob).get("/t/acme/audit/sessions/").content.decode()  # the person's own list
    assert expected in signed_in(world.bob).get("/t/acme/c/hpc/").content.decode()  # the cluster page

    past = session.reattach_until + timedelta(seconds=1)
    monkeypatch.setattr("terminal.models.timezone.now", lambda: past)
    assert TerminalSession.objects.get(pk=session.pk).live_state == "detached, ending"
    actions.record_reattach(session, client_address="127.0.0.1")
    session.refresh_from_db()
    assert session.detached_at is None and session.live_state == "live"


def test_the_terminal_page_reattaches_only_to_ones_own_live_session(world):
    session = TerminalSession.objects.get(user=world.bob)
    page = signed_in(world.bob).get(f"/t/acme/c/hpc/terminal/?attach={session.pk}&renderer=dom").content.decode()
    assert f'data-attach="{session.pk}"' in page
    assert 'href="/t/acme/c/hpc/terminal/?renderer=dom"' in page  # New session does not carry ?attach=
    alice_page = signed_in(world.alice).get(f"/t/acme/c/hpc/terminal/?attach={session.pk}").content.decode()
    assert 'data-attach=""' in alice_page and "That terminal session has ended; this is a new one." in alice_page
    actions.finish_terminal_session(session, reason="closed")
    assert 'data-attach=""' in signed_in(world.bob).get(f"/t/acme/c/hpc/terminal/?attach={session.pk}").content.decode()


def test_the_poller_state_reads_up_or_not_answering(world, monkeypatch):
    world.hpc.poll_posix_username, world.hpc.poll_uid = "clusterra-poll", 1002
    world.hpc.save()
    # The poller's real state in Redis (jobs/pollstate.py), as the poller writes it.
    conn = dashboard.pollstate.client()
    keys = [dashboard.pollstate.STATE_KEY.format(world.hpc.pk), dashboard.pollstate.DUE_KEY.format(world.hpc.pk)]
    conn.delete(*keys)
    try:
        for _ in range(3):
            dashboard.pollstate.record_failure(world.hpc, "Slurm on hpc is not answering", conn)
        page = signed_in(world.bob).get("/").content.decode()
        assert "Slurm not answering since" in page and timezone.now().strftime("%Y-%m-%d") in page
        dashboard.pollstate.record_success(world.hpc, conn)
        assert ">up<" in signed_in(world.bob).get("/").content.decode()
    finally:
        conn.delete(*keys)


# --- the real detach: a terminal whose socket closes ------------------------------------------------------
@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
async def test_closing_the_tab_detaches_and_reattaching_clears_it(cast, settings):
    from channels.db import database_sync_to_async as sync_to_async

    from terminal.live import LiveSession
    from tests.terminal_client import TerminalClient, settle_sessions, terminal_path

    settings.TERMINAL_REATTACH_GRACE = 120
    try:
        client = TerminalClient(cast.bob, terminal_path())
        assert await client.connect()
        session_id = (await client.wait_for_status("connected"))["session_id"]
        await client.close()  # the tab closed

        async def row():
            return await sync_to_async(TerminalSession.objects.get)(pk=session_id)

        for _ in range(100):
            if (await row()).detached_at is not None:
                break
            await asyncio.sleep(0.05)
        detached = await row()
        assert detached.ended_at is None and detached.is_detached
        assert timedelta(seconds=119) < detached.reattach_until - detached.detached_at <= timedelta(seconds=120)
        assert detached.live_state.startswith("detached, reattachable for 1 minute")

        again = TerminalClient(cast.bob, terminal_path(attach=session_id))
        assert await again.connect()
        assert (await again.wait_for_status("connected"))["reattached"] is True
        assert (await row()).live_state == "live"
        await LiveSession.end_all()
    finally:
        await settle_sessions()


def test_command_lines_are_argv_lists_with_the_user_as_one_word():
    assert quotas.sacctmgr_argv("a-b") == ["sacctmgr", "--noheader", "--parsable2", "show", "assoc", "user=a-b",
                                           "format=" + ",".join(quotas.ASSOC_FIELDS)]
    assert quotas.df_argv(["/home/x", "-rf"]) == ["df", "-P", "-B1", "--", "/home/x", "-rf"]  # never an option


def test_beat_collects_every_quota_interval(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["collect-quotas"]
    assert entry == {"task": tasks.collect_quotas_due.name, "schedule": settings.QUOTA_INTERVAL}
    assert tasks.collect_quotas_due.name == "clusters.tasks.collect_quotas_due"
