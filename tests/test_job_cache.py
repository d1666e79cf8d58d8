"""The job cache against the live Slurm: a poll writes only what changed, and a tenant never sees (or
acts on) the jobs of people outside it when two tenants share one Slurm."""

import re
import subprocess
import time

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from accounts.services import create_api_token, ensure_user, set_membership
from clusters.executors import LocalExecutor
from clusters.models import ClusterAccount
from clusters.services import configure_polling, ensure_cluster, map_account
from jobs import slurm
from jobs.actions import sync_job
from jobs.models import Job, QueueSummary
from jobs.services import refresh_jobs
from tests.conftest import PASSWORD, _ensure_posix_user

pytestmark = [pytest.mark.django_db]


def sbatch(account: ClusterAccount, *options: str) -> str:
    """Submit `sleep 60` as the account's user; `--hold` keeps it PENDING, so it changes only when a test says so."""
    argv = ["sbatch", "--parsable", f"--chdir=/home/{account.posix_username}", "--time=5", "--output=/dev/null", *options,
            "--wrap=sleep 60"]
    result = LocalExecutor().run(account, argv, env=slurm.SLURM_ENV)
    assert result.ok, result.error_text()
    return slurm.parse_sbatch(result.stdout)


def as_user(account: ClusterAccount, *argv: str) -> None:
    result = LocalExecutor().run(account, list(argv), env=slurm.SLURM_ENV)
    assert result.ok, result.error_text()


def job_writes(queries) -> list[str]:
    return [q["sql"] for q in queries if re.match(r'\s*(INSERT INTO|UPDATE) "jobs_job"', q["sql"])]


# --- a poll writes only new and changed rows ---------------------------------------------------------
@pytest.fixture
def solo(cast, live_slurm):
    """A cluster of tenant acme whose only mapped user is a POSIX user no other test submits as."""
    entry = _ensure_posix_user("clusterra-ta")
    poller = _ensure_posix_user("clusterra-poll")
    cluster = ensure_cluster(tenant=cast.acme, slug="solo", name="Solo")
    configure_polling(cluster, posix_username=poller.pw_name, uid=poller.pw_uid)
    account = map_account(cluster=cluster, user=cast.bob, posix_username=entry.pw_name, uid=entry.pw_uid)
    yield cluster, account
    LocalExecutor().run(account, ["scancel", f"--user={entry.pw_name}"], timeout=30)


@pytest.mark.slow
@pytest.mark.slurm
def test_a_poll_rewrites_no_unchanged_row_and_lands_every_change(solo):
    cluster, account = solo
    array = sbatch(account, "--hold", "--array=1-6", "--job-name=steady")
    tasks = [f"{array}_{i}" for i in range(1, 7)]
    first = refresh_jobs(cluster)
    rows = {j.job_id: j for j in Job.objects.filter(cluster=cluster, array_job_id=int(array))}
    assert set(rows) == set(tasks) and first.jobs_written >= 6
    assert all(j.owner == account and j.state == "PENDING" and j.reason == "JobHeldUser" and j.poll_digest for j in rows.values())

    # Nothing changed in the queue: not one INSERT or UPDATE of a job row, and no row's stamp moves.
    with CaptureQueriesContext(connection) as queries:
        steady = refresh_jobs(cluster)
    assert job_writes(queries.captured_queries) == [] and steady.jobs_written == 0
    assert steady.jobs_in_queue == first.jobs_in_queue and steady.jobs_left_queue == 0
    stamps = {j.job_id: (j.last_seen_at, j.poll_digest) for j in Job.objects.filter(cluster=cluster, array_job_id=int(array))}
    assert stamps == {k: (j.last_seen_at, j.poll_digest) for k, j in rows.items()}
    summary = QueueSummary.objects.get(cluster=cluster)
    assert summary.polled_at > rows[tasks[0]].last_seen_at and summary.jobs_in_queue == steady.jobs_in_queue

    # Every kind of change lands, and only the changed rows are written: a new name, another hold reason,
    # a task that left the queue, a new job, and a task that starts running (state and start time).
    as_user(account, "scontrol", "update", f"JobId={tasks[0]}", "JobName=renamed")
    subprocess.run(["scontrol", "hold", tasks[1]], check=True, timeout=30, capture_output=True)  # as root: JobHeldAdmin
    as_user(account, "scancel", tasks[2])
    new_job = sbatch(account, "--hold", "--job-name=newcomer")
    changed = refresh_jobs(cluster)
    after = {j.job_id: j for j in Job.objects.filter(cluster=cluster, job_id__in=[*tasks, new_job])}
    assert after[tasks[0]].name == "renamed" and after[tasks[1]].reason == "JobHeldAdmin"
    assert not after[tasks[2]].in_queue and after[new_job].name == "newcomer" and after[new_job].owner == account
    assert changed.jobs_written == 3 and changed.jobs_left_queue == 1
    for untouched in tasks[3:]:
        assert (after[untouched].last_seen_at, after[untouched].poll_digest) == stamps[untouched]

    as_user(account, "scontrol", "release", tasks[3])
    deadline = time.monotonic() + 30
    while True:
        refresh_jobs(cluster)
        running = Job.objects.get(cluster=cluster, job_id=tasks[3])
        if running.state == "RUNNING" and running.start_time is not None:
            break
        assert time.monotonic() < deadline, (running.state, running.reason)
        time.sleep(0.3)
    assert Job.objects.get(cluster=cluster, job_id=tasks[4]).last_seen_at == stamps[tasks[4]][0]


@pytest.mark.slow
@pytest.mark.slurm
def test_a_job_action_makes_the_next_poll_write_the_row_again(solo):
    cluster, account = solo
    job_id = sbatch(account, "--hold", "--job-name=synced")
    refresh_jobs(cluster)
    assert Job.objects.get(cluster=cluster, job_id=job_id).poll_digest
    sync_job(account, job_id)  # what submit, cancel and output do: scontrol's view of the job
    assert Job.objects.get(cluster=cluster, job_id=job_id).poll_digest == ""
    refresh_jobs(cluster)
    assert Job.objects.get(cluster=cluster, job_id=job_id).poll_digest


# --- two tenants on one Slurm ------------------------------------------------------------------------
@pytest.fixture
def two_tenants(slurm_cast):
    """Tenant acme (alice admin, bob) and tenant other (charlie admin, and dana whose POSIX user nobody in
    acme has), each with its own Cluster row pointing at the same local Slurm, both polled."""
    c = slurm_cast
    entry = _ensure_posix_user("clusterra-tb")
    poller = _ensure_posix_user("clusterra-poll")
    configure_polling(c.other_hpc, posix_username=poller.pw_name, uid=poller.pw_uid)
    c.dana = ensure_user(email="dana@other.test", password=PASSWORD)
    set_membership(tenant=c.other, user=c.dana, role="member")
    c.dana_account = map_account(cluster=c.other_hpc, user=c.dana, posix_username=entry.pw_name, uid=entry.pw_uid)
    _, c.alice_token = create_api_token(user=c.alice, tenant=c.acme, name="test")
    _, c.charlie_token = create_api_token(user=c.charlie, tenant=c.other, name="test")
    yield c
    LocalExecutor().run(c.dana_account, ["scancel", f"--user={entry.pw_name}"], timeout=30)


@pytest.mark.slow
@pytest.mark.slurm
def test_jobs_of_another_tenants_user_are_invisible_and_only_counted(two_tenants):
    c = two_tenants
    foreign = sbatch(c.dana_account, "--hold", "--partition=batch", "--job-name=dana secret")
    own = sbatch(c.bob_account, "--hold", "--job-name=bob visible")
    poll = refresh_jobs(c.hpc)
    refresh_jobs(c.other_hpc)

    # Not cached for acme at all; counted anonymously on acme's cluster.
    assert not Job.objects.filter(cluster=c.hpc, job_id=foreign).exists()
    assert Job.objects.filter(cluster=c.hpc, job_id=own, owner=c.bob_account).exists()
    assert Job.objects.filter(cluster=c.other_hpc, job_id=foreign, owner=c.dana_account).exists()  # other's own cache
    summary = QueueSummary.objects.get(cluster=c.hpc)
    assert summary.other_jobs == poll.other_jobs >= 1
    pending_in_batch = {(e["partition"], e["state"]): e["jobs"] for e in summary.other_counts}[("batch", "PENDING")]
    assert pending_in_batch >= 1 and sum(e["jobs"] for e in summary.other_counts) == summary.other_jobs

    # acme's admin: not on the All jobs page (not even filtered by its POSIX user), only the anonymous count.
    pages = Client()
    pages.force_login(c.alice)
    everything = pages.get("/t/acme/c/hpc/jobs/?scope=all").content.decode()
    assert "bob visible" in everything and "dana secret" not in everything and "clusterra-tb" not in everything
    assert "other job" in everything and "(not in this tenant)" in everything
    assert "dana secret" not in pages.get("/t/acme/c/hpc/jobs/?scope=all&user=clusterra-tb").content.decode()
    cluster_page = pages.get("/t/acme/c/hpc/").content.decode()
    assert f"{summary.other_jobs} other job" in cluster_page and "(not in this tenant)" in cluster_page
    assert "dana" not in cluster_page
    assert pages.get(f"/t/acme/c/hpc/jobs/{foreign}/").status_code == 404
    assert pages.post(f"/t/acme/c/hpc/jobs/{foreign}/cancel/").status_code == 404

    # The API says the same, with a token of acme's admin.
    api = Client(HTTP_AUTHORIZATION=f"Bearer {c.alice_token}")
    jobs_url = f"/v1/clusters/{c.hpc.pk}/jobs"
    bobs = [j["job_id"] for j in api.get(f"{jobs_url}?user={c.posix.pw_name}&limit=500").json()["items"]]
    assert own in bobs and foreign not in bobs
    assert api.get(f"{jobs_url}?user=clusterra-tb").json()["items"] == []
    for response in (api.get(f"{jobs_url}/{foreign}"), api.delete(f"{jobs_url}/{foreign}"), api.get(f"{jobs_url}/{foreign}/output")):
        assert response.status_code == 404, (response.request, response.content)

    # Nothing was done to it, and its own tenant's admin does see it.
    still = LocalExecutor().run(c.dana_account, ["squeue", "--noheader", "--jobs", foreign, "--format=%T"], env=slurm.SLURM_ENV)
    assert still.stdout.decode().split() == ["PENDING"]
    other_admin = Client(HTTP_AUTHORIZATION=f"Bearer {c.charlie_token}")
    assert other_admin.get(f"/v1/clusters/{c.other_hpc.pk}/jobs/{foreign}").json()["name"] == "dana secret"


@pytest.mark.slow
@pytest.mark.slurm
def test_an_admin_looking_at_a_members_job_keeps_its_owner_and_never_stores_a_foreign_one(two_tenants):
    c = two_tenants
    bobs = sbatch(c.bob_account, "--hold", "--job-name=bob's")
    foreign = sbatch(c.dana_account, "--hold", "--job-name=dana's")
    refresh_jobs(c.hpc)
    # scontrol shows alice any job; what it says about bob's job must not take the job away from bob,
    # and a job of someone outside the tenant must not be stored because alice asked about it.
    assert sync_job(c.alice_account, bobs).owner == c.bob_account
    assert sync_job(c.alice_account, foreign) is None
    assert not Job.objects.filter(cluster=c.hpc, job_id=foreign).exists()


def test_an_old_cached_foreign_row_stays_hidden(client, cast):
    from django.utils import timezone

    now = timezone.now()
    Job.objects.create(cluster=cast.hpc, job_id="7001", posix_user="outsider", name="not ours", state="RUNNING",
                       submit_time=now, last_seen_at=now)
    client.force_login(cast.alice)
    assert "not ours" not in client.get("/t/acme/c/hpc/jobs/?scope=all").content.decode()
    assert client.get("/t/acme/c/hpc/jobs/7001/").status_code == 404
