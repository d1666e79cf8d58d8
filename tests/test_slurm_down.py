"""slurmctld down (issue 8 §4): the real controller is stopped for ~half a minute and started again.

The job pages keep rendering the cache with a banner naming the cause, actions answer 503 within their
timeout, the real Celery poller (worker + beat) backs off and logs the outage once, the cluster page shows
its state, and when slurmctld is back everything recovers by itself. Other people's Slurm tests on this
machine fail while the controller is down: keep this the only such test and the outage short.
"""

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from django.db import connections
from django.test import Client
from django.utils import timezone

from accounts.services import create_api_token
from clusters.executors import LocalExecutor
from clusters.models import Cluster
from jobs import pollstate
from jobs.models import Job
from tests.conftest import BASE_DIR, stop_process

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.django_db(transaction=True)]

REDIS_URL = "redis://127.0.0.1:6379/12"  # this test's own Redis database: broker and poll state
SLURM_LOCAL = str(BASE_DIR / "scripts" / "slurm-local.sh")
OUTAGE_LOG = "poll of cluster hpc failed"
RECOVERY_LOG = "poll of cluster hpc works again"


def wait_until(condition, timeout: float, what: str, step: float = 0.3, explain=lambda: ""):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{explain()}"
        time.sleep(step)


@contextlib.contextmanager
def slurm_local_lock(timeout: float = 300):
    """Hold scripts/slurm-local.sh's lock, so that no other run's `slurm-local.sh up` on this machine
    restarts slurmctld in the middle of the outage (it waits for the lock instead)."""
    os.makedirs("/run/slurm-local", exist_ok=True)
    with open("/run/slurm-local/lock", "a") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "another slurm-local.sh held its lock for 300 s"
                time.sleep(0.2)
        try:
            yield {**os.environ, "SLURM_LOCAL_LOCK_HELD": "1"}
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def timed(call):
    """Run `call` (in a worker thread) and return (response, seconds); the thread's DB connection is closed."""
    started = time.monotonic()
    try:
        return call(), time.monotonic() - started
    finally:
        connections.close_all()


def test_slurmctld_down_503s_banner_backoff_and_recovery(slurm_cast, settings, tmp_path):
    c = slurm_cast
    settings.POLL_LOCK_REDIS_URL = REDIS_URL
    Cluster.objects.filter(pk=c.hpc.pk).update(poll_interval=2)
    c.hpc.refresh_from_db()
    _, token = create_api_token(user=c.bob, tenant=c.acme, name="outage")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    jobs_url = f"/v1/clusters/{c.hpc.pk}/jobs"
    # A job of bob's in the cache that Slurm no longer knows (no output path yet: reading it needs scontrol).
    Job.objects.create(cluster=c.hpc, job_id="4242427", owner=c.bob_account, posix_user=c.posix.pw_name,
                       state="RUNNING", last_seen_at=timezone.now(), submit_time=timezone.now())
    script = f"{c.posix.pw_dir}/outage.sh"
    assert LocalExecutor().run(c.bob_account, ["sh", "-c", 'printf "#!/bin/sh\\ntrue\\n" > "$1"', "sh", script]).ok
    browser = Client()
    browser.force_login(c.bob)
    pages = f"/t/{c.acme.slug}/c/{c.hpc.slug}"
    conn = redis.Redis.from_url(REDIS_URL)
    conn.flushdb()

    env = {
        **os.environ,
        "CLUSTERRA_DATABASE_URL": "postgres://{USER}@{HOST}:{PORT}/{NAME}".format(**connections["default"].settings_dict),
        "CLUSTERRA_DATA_DIR": str(tmp_path), "CLUSTERRA_SECRET_KEY": settings.SECRET_KEY,
        "CLUSTERRA_CELERY_BROKER_URL": REDIS_URL, "CLUSTERRA_POLL_LOCK_REDIS_URL": REDIS_URL, "CLUSTERRA_POLL_TICK": "1",
    }
    log_path = tmp_path / "celery.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "clusterra", "worker", "--beat", "--pool=solo", "--loglevel=INFO",
         f"--schedule={tmp_path / 'beat-schedule'}"],
        cwd=BASE_DIR, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
    )
    log = log_path.read_text
    try:
        first = wait_until(lambda: (s := pollstate.read(c.hpc)) and s.ok_at and s, 120, "a first good poll",
                           explain=lambda: log()[-3000:])
        assert not first.failing

        with slurm_local_lock() as lock_env:
            subprocess.run([SLURM_LOCAL, "stop-ctld"], check=True, timeout=60, capture_output=True, env=lock_env)
            stopped_at = time.monotonic()
            try:
                # Actions need slurmctld: 503 naming the cause, each within its bounded timeout (run side by side).
                calls = {
                    "api submit": lambda: Client().post(jobs_url, {"script": "#!/bin/sh\ntrue\n"}, content_type="application/json", **auth),
                    "api cancel": lambda: Client().delete(f"{jobs_url}/4242427", **auth),
                    "api output": lambda: Client().get(f"{jobs_url}/4242427/output", **auth),
                    "page submit": lambda: browser.post(f"{pages}/jobs/submit/", {"script_path": script}),
                    "page cancel": lambda: browser.post(f"{pages}/jobs/4242427/cancel/"),
                }
                with ThreadPoolExecutor(len(calls)) as pool:
                    futures = {name: pool.submit(timed, call) for name, call in calls.items()}
                    answers = {name: f.result(timeout=90) for name, f in futures.items()}
                for name, (response, seconds) in answers.items():
                    assert response.status_code == 503, (name, response.status_code, response.content[:500])
                    assert seconds < 40, (name, seconds)  # the executor's 30 s timeout bounds every Slurm call
                    text = response.json()["detail"] if name.startswith("api") else response.content.decode()
                    assert f"Slurm on {c.hpc.name} is not answering" in text, (name, text[:1000])
                    assert "Unable to contact slurm controller" in text, (name, text[:1000])
                assert answers["api submit"][0]["Retry-After"]

                # The poller: failing, backing off, the outage logged once.
                # (retry_in is None for the instant the poller is retrying: wait for a state between two tries)
                state = wait_until(lambda: (s := pollstate.read(c.hpc)) and s.failures >= 2 and s.retry_in is not None and s,
                                   90, "two failed polls",
                               explain=lambda: log()[-3000:])
                assert "Unable to contact slurm controller" in state.error and state.ok_at is not None
                assert state.retry_in is not None and state.retry_in <= pollstate.BACKOFF_MAX
                assert log().count(OUTAGE_LOG) == 1, log()[-3000:]
                # Pages that read the cache still render, with the banner; the job page does not wait for Slurm.
                listing = browser.get(f"{pages}/jobs/")
                assert listing.status_code == 200 and b"4242427" in listing.content
                body = listing.content.decode()
                assert f"Slurm on {c.hpc.name} is not answering" in body and "showing cached data from" in body
                started = time.monotonic()
                detail = browser.get(f"{pages}/jobs/4242427/")
                assert detail.status_code == 200 and "is not answering" in detail.content.decode()
                assert time.monotonic() - started < 5
                cluster_page = browser.get(f"{pages}/")
                assert cluster_page.status_code == 200 and "failing since" in cluster_page.content.decode()
                assert "Unable to contact slurm controller" in cluster_page.content.decode()
                api_list = Client().get(jobs_url, **auth)
                assert api_list.status_code == 200 and "4242427" in {j["job_id"] for j in api_list.json()["items"]}
                [listed] = Client().get("/v1/clusters", **auth).json()  # how fresh the cache is, for API clients
                assert listed["poll"]["failing"] and "Unable to contact slurm controller" in listed["poll"]["error"]
            finally:
                restart = subprocess.run([SLURM_LOCAL, "start-ctld"], timeout=120, capture_output=True, text=True,
                                         env=lock_env)
                if restart.returncode != 0:  # never leave the shared Slurm down
                    subprocess.run([SLURM_LOCAL, "up"], timeout=300, capture_output=True, env=lock_env)
                assert restart.returncode == 0, restart.stdout + restart.stderr
                outage = time.monotonic() - stopped_at
        print(f"slurmctld was down for {outage:.1f} s")

        # Back: the poller finds out by itself (after at most its current back-off), once.
        wait_until(lambda: (s := pollstate.read(c.hpc)) and not s.failing and s.ok_at > first.ok_at, 150, "recovery",
                   explain=lambda: log()[-3000:])
        assert log().count(RECOVERY_LOG) == 1 and log().count(OUTAGE_LOG) == 1, log()[-3000:]
        listing = browser.get(f"{pages}/jobs/")
        assert listing.status_code == 200 and "is not answering" not in listing.content.decode()
        assert "last good poll" in browser.get(f"{pages}/").content.decode()
        [listed] = Client().get("/v1/clusters", **auth).json()
        assert not listed["poll"]["failing"] and listed["poll"]["ok_at"]
        submitted = Client().post(jobs_url, {"script": "#!/bin/sh\ntrue\n"}, content_type="application/json", **auth)
        assert submitted.status_code == 201, submitted.content
    finally:
        stop_process(worker, timeout=20)
        conn.flushdb()
