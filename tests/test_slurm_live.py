"""Against the live single-node Slurm that `make test` starts (scripts/slurm-local.sh); never skipped."""

import subprocess
import time
from pathlib import Path

import pytest

from clusters.executors import LocalExecutor
from clusters.models import Cluster
from jobs import slurm
from jobs.models import Job
from jobs.services import finish_from_accounting, refresh_jobs
from tests.conftest import stop_process

pytestmark = [pytest.mark.django_db, pytest.mark.slow, pytest.mark.slurm]


def submit(account, script: str, **options) -> str:
    home = Path(f"/home/{account.posix_username}")
    script_path = home / f"job-{time.monotonic_ns()}.sh"
    result = LocalExecutor().run(account, ["sh", "-c", 'cat > "$1" && chmod 700 "$1"', "sh", str(script_path)], stdin=script.encode())
    assert result.ok, result.error_text()
    argv = slurm.sbatch_argv(slurm.SubmitOptions(working_directory=str(home), **options), str(script_path))
    result = LocalExecutor().run(account, argv, env=slurm.SLURM_ENV)
    assert result.ok, result.error_text()
    return slurm.parse_sbatch(result.stdout)


def wait_for_state(cluster, job_id, states, timeout=30) -> Job:
    deadline = time.monotonic() + timeout
    while True:
        refresh_jobs(cluster)
        job = Job.objects.filter(cluster=cluster, job_id=job_id).first()
        if job is not None and job.state in states:
            return job
        assert time.monotonic() < deadline, f"job {job_id} never reached {states}: {job and job.state}"
        time.sleep(0.3)


def test_submitted_job_reaches_the_cache_and_completes(slurm_cast):
    c = slurm_cast
    job_id = submit(c.bob_account, "#!/bin/bash\necho hello from $(whoami)\nexit 3\n", name="we|ird name ✓", partition="batch")
    job = wait_for_state(c.hpc, job_id, {"COMPLETED", "FAILED"})
    assert job.owner == c.bob_account and job.posix_user == c.posix.pw_name
    assert job.name == "we|ird name ✓" and job.partition == "batch" and job.work_dir == c.posix.pw_dir
    assert job.state == "FAILED" and job.in_queue
    output = Path(c.posix.pw_dir) / f"slurm-{job_id}.out"
    assert output.read_text() == f"hello from {c.posix.pw_name}\n"
    # What sacct says once a job has left the queue: final state and exit code (slurmdbd may lag behind the
    # controller for a moment, and a not-yet-final answer is not written: ask until it is final).
    deadline = time.monotonic() + 30
    while True:
        finish_from_accounting(c.hpc, [Job.objects.select_related("owner").get(pk=job.pk)])
        job.refresh_from_db()
        if job.exit_code is not None or time.monotonic() > deadline:
            break
        assert job.state == "FAILED", f"a lagging accounting answer overwrote the final state: {job.state}"
        time.sleep(0.3)
    assert job.state == "FAILED" and job.exit_code == 3 and job.end_time is not None


def test_cancel_own_job_but_not_another_users(slurm_cast):
    c = slurm_cast
    job_id = submit(c.bob_account, "#!/bin/bash\nsleep 300\n", time_limit="5")
    refused = LocalExecutor().run(c.alice_account, slurm.scancel_argv(job_id))
    assert not refused.ok and "Access/permission denied" in refused.error_text()
    assert LocalExecutor().run(c.bob_account, slurm.scancel_argv(job_id)).ok
    job = wait_for_state(c.hpc, job_id, {"CANCELLED"})
    assert job.owner == c.bob_account


def test_slurm_errors_come_back_in_slurms_words(slurm_cast):
    c = slurm_cast
    argv = slurm.sbatch_argv(slurm.SubmitOptions(working_directory=c.posix.pw_dir, partition="nosuch"), None)
    result = LocalExecutor().run(c.bob_account, argv, stdin=b"#!/bin/sh\ntrue\n")
    assert not result.ok and "Invalid partition name specified" in result.error_text()


def test_jobs_that_left_the_queue_are_marked(slurm_cast):
    c = slurm_cast
    ghost = Job.objects.create(cluster=c.hpc, job_id="999999", posix_user="nobody-here", state="RUNNING",
                               in_queue=True, last_seen_at="2026-01-01T00:00:00Z")
    result = refresh_jobs(c.hpc)
    ghost.refresh_from_db()
    assert not ghost.in_queue and result.jobs_left_queue >= 1


def test_partitions_from_the_live_cluster(slurm_cast):
    c = slurm_cast
    result = LocalExecutor().run(c.bob_account, slurm.sinfo_argv(), env=slurm.SLURM_ENV)
    partitions = {p.name: p for p in slurm.parse_sinfo(result.stdout)}
    assert partitions["debug"].is_default and not partitions["batch"].is_default
    assert partitions["debug"].cpus_total >= 1


def test_claim_poll_is_one_per_interval(slurm_cast):
    import redis
    from django.conf import settings

    from jobs.tasks import claim_poll

    client = redis.Redis.from_url(settings.POLL_LOCK_REDIS_URL)
    client.delete(f"clusterra:poll:{slurm_cast.hpc.pk}")
    assert claim_poll(slurm_cast.hpc, client)
    assert not claim_poll(slurm_cast.hpc, client)  # a second worker, or the next tick: not due yet
    assert 0 < client.ttl(f"clusterra:poll:{slurm_cast.hpc.pk}") <= slurm_cast.hpc.poll_interval
    client.delete(f"clusterra:poll:{slurm_cast.hpc.pk}")


@pytest.mark.django_db(transaction=True)
def test_celery_worker_and_beat_keep_the_cache_fresh(slurm_cast, tmp_path):
    """The real thing: a Celery worker with beat, on the local Redis, against the test database."""
    import os
    import sys

    from django.conf import settings
    from django.db import connection

    c = slurm_cast
    Cluster.objects.filter(pk=c.hpc.pk).update(poll_interval=2)
    s = connection.settings_dict
    env = {
        **os.environ,
        "CLUSTERRA_DATABASE_URL": f"postgres://{s['USER']}@{s['HOST']}:{s['PORT']}/{s['NAME']}",
        "CLUSTERRA_DATA_DIR": str(tmp_path),
        "CLUSTERRA_SECRET_KEY": settings.SECRET_KEY,
        "CLUSTERRA_CELERY_BROKER_URL": "redis://127.0.0.1:6379/14",  # the tests' own Redis database
        "CLUSTERRA_POLL_TICK": "1",
    }
    import redis

    redis.Redis.from_url(env["CLUSTERRA_CELERY_BROKER_URL"]).flushdb()
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "clusterra", "worker", "--beat", "--pool=solo", "--loglevel=INFO",
         f"--schedule={tmp_path / 'beat-schedule'}"],
        cwd=Path(__file__).resolve().parent.parent, env=env, stdout=open(tmp_path / "celery.log", "w"), stderr=subprocess.STDOUT,
    )
    try:
        job_id = submit(c.bob_account, "#!/bin/bash\nsleep 1\n", name="polled")
        deadline = time.monotonic() + 30
        while not Job.objects.filter(cluster=c.hpc, job_id=job_id, state="COMPLETED").exists():
            assert worker.poll() is None, (tmp_path / "celery.log").read_text()[-2000:]
            assert time.monotonic() < deadline, (tmp_path / "celery.log").read_text()[-2000:]
            time.sleep(0.5)
        job = Job.objects.get(cluster=c.hpc, job_id=job_id)
        assert job.owner == c.bob_account and job.name == "polled"
        # Beat queues the dashboard's quota collection once at start (clusterra/celery.py), not only after the
        # first 5-minute interval: bob's usage is collected, as bob, within seconds.
        from clusters.models import AccountUsage

        deadline = time.monotonic() + 60
        while not AccountUsage.objects.filter(account=c.bob_account, collected_at__isnull=False).exists():
            assert worker.poll() is None, (tmp_path / "celery.log").read_text()[-2000:]
            assert time.monotonic() < deadline, (tmp_path / "celery.log").read_text()[-2000:]
            time.sleep(0.5)
    finally:
        stop_process(worker, timeout=20)


def test_submit_and_cancel_actions(slurm_cast):
    from audit.models import AuditEvent
    from jobs.actions import JobActionError, SubmitRequest, cancel_job, submit_job
    from jobs.validation import JobRequestError

    c = slurm_cast
    home = c.posix.pw_dir
    script = Path(home) / "action-test.sh"
    LocalExecutor().run(c.bob_account, ["sh", "-c", 'printf "#!/bin/bash\\nsleep 120\\n" > "$1"', "sh", str(script)])
    job = submit_job(c.bob_account, SubmitRequest(script_path=str(script), name="via action", time_limit="5"), actor=c.bob)
    assert job.owner == c.bob_account and job.name == "via action" and job.work_dir == home
    assert job.stdout_path == f"{home}/slurm-{job.job_id}.out" and job.time_limit == 300
    assert AuditEvent.objects.filter(action="job.submit", target_id=str(job.pk), actor=c.bob).exists()

    inline = submit_job(c.bob_account, SubmitRequest(script="#!/bin/bash\ntrue\n", partition="batch"), actor=c.bob)
    assert inline.partition == "batch" and inline.work_dir == home

    with pytest.raises(JobActionError, match="Invalid partition name specified"):
        submit_job(c.bob_account, SubmitRequest(script="#!/bin/sh\ntrue\n", partition="nosuch"), actor=c.bob)
    with pytest.raises(JobRequestError, match="inside"):
        submit_job(c.bob_account, SubmitRequest(script_path="/etc/passwd"), actor=c.bob)
    with pytest.raises(JobActionError, match="Unable to open file|No such file"):
        submit_job(c.bob_account, SubmitRequest(script_path=f"{home}/missing.sh"), actor=c.bob)

    with pytest.raises(JobActionError, match="Access/permission denied") as denied:
        cancel_job(c.alice_account, job, actor=c.alice)
    assert denied.value.status == 403
    cancelled = cancel_job(c.bob_account, job, actor=c.bob)
    assert cancelled.state in ("CANCELLED", "COMPLETING")  # right after scancel, a running job may be COMPLETING
    wait_for_state(c.hpc, job.job_id, {"CANCELLED"})


def test_submitting_an_array_stores_its_pending_tasks_record(slurm_cast):
    from jobs.actions import SubmitRequest, submit_job

    c = slurm_cast
    job = submit_job(c.bob_account, SubmitRequest(script="#!/bin/bash\ntrue\n", array="1-3", partition="batch",
                                                  name="arr", time_limit="5"), actor=c.bob)
    # scontrol's record of the still-unsplit array, under the id the poller uses for it too.
    assert job.array_job_id is not None and job.name == "arr" and job.partition == "batch"
    assert job.job_id in (f"{job.array_job_id}_[1-3]", f"{job.array_job_id}_1")


def test_syncing_one_array_task_reads_that_task(slurm_cast):
    from jobs.actions import sync_job

    c = slurm_cast
    array_id = submit(c.bob_account, "#!/bin/bash\nsleep 60\n", array="1-3", time_limit="5")
    wait_for_state(c.hpc, f"{array_id}_3", {"RUNNING"})  # running tasks are split into their own records
    task = sync_job(c.bob_account, f"{array_id}_2")
    assert task.job_id == f"{array_id}_2" and task.array_task_id == "2" and task.state == "RUNNING"
