#!/usr/bin/env python3
"""Job cache benchmark: a poll (squeue + parse + upsert) and page/API latency with 1k and 10k jobs queued.

    .venv/bin/python bench/jobs.py [--counts 1000,10000] [--requests 200]

Needs root and the live local Slurm (scripts/slurm-local.sh up). For each count it submits one held
array of that many tasks as the POSIX user `clusterra-bench` (squeue --array lists every task), times
refresh_jobs() three times (the first inserts, the others update), then measures p50/p95 of the My jobs
page and of GET /v1/clusters/{id}/jobs over HTTP against daphne, and cancels the array. The database is
a fresh SQLite file (the embedded default) unless CLUSTERRA_DATABASE_URL is set.
"""

import argparse
import os
import pwd
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BASE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE))
DATA = tempfile.mkdtemp(prefix="clusterra-jobs-bench-")
os.environ.setdefault("CLUSTERRA_DATA_DIR", DATA)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clusterra.settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY  # noqa: E402
from django.contrib.sessions.backends.db import SessionStore  # noqa: E402
from django.core.management import call_command  # noqa: E402

from accounts.services import create_api_token, ensure_tenant, ensure_user, set_membership  # noqa: E402
from clusters.executors import LocalExecutor  # noqa: E402
from clusters.services import configure_polling, ensure_cluster, map_account  # noqa: E402
from jobs.models import Job  # noqa: E402
from jobs.services import refresh_jobs  # noqa: E402

USER = "clusterra-bench"


def posix_user(name):
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True, timeout=30)
        return pwd.getpwnam(name)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(samples):
    samples = sorted(samples)
    return statistics.median(samples), samples[int(0.95 * (len(samples) - 1))]


def timed_get(url, headers, n):
    times = []
    for _ in range(n):
        request = urllib.request.Request(url, headers=headers)
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            assert response.status == 200
        times.append((time.perf_counter() - start) * 1000)
    return percentiles(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1000,10000")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("Run as root (it creates POSIX users and submits jobs as them).")
    call_command("migrate", verbosity=0)
    entry, poller = posix_user(USER), posix_user("clusterra-poll")
    tenant = ensure_tenant(slug="bench", name="Bench")
    cluster = ensure_cluster(tenant=tenant, slug="local", name="Local")
    configure_polling(cluster, posix_username=poller.pw_name, uid=poller.pw_uid)
    user = ensure_user(email="bench@bench.test", password=None)
    set_membership(tenant=tenant, user=user, role="member")
    account = map_account(cluster=cluster, user=user, posix_username=entry.pw_name, uid=entry.pw_uid)
    _, token = create_api_token(user=user, tenant=tenant, name="bench")
    session = SessionStore()
    session.update({SESSION_KEY: str(user.pk), BACKEND_SESSION_KEY: "django.contrib.auth.backends.ModelBackend",
                    HASH_SESSION_KEY: user.get_session_auth_hash()})
    session.create()

    port = free_port()
    daphne = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "clusterra.asgi:application"],
                              cwd=BASE, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        executor = LocalExecutor()
        for count in [int(c) for c in args.counts.split(",")]:
            executor.run(account, ["scancel", f"--user={USER}"], timeout=120)
            result = executor.run(account, ["sbatch", "--parsable", "--hold", f"--array=1-{count}", f"--chdir={entry.pw_dir}",
                                            "--job-name=bench", "--wrap=true"], timeout=120)
            assert result.ok, result.error_text()
            polls = []
            for _ in range(3):
                start = time.perf_counter()
                poll = refresh_jobs(cluster)
                polls.append(time.perf_counter() - start)
            in_cache = Job.objects.filter(cluster=cluster, posix_user=USER, in_queue=True).count()
            page = timed_get(f"http://127.0.0.1:{port}/t/bench/c/local/jobs/", {"Cookie": f"sessionid={session.session_key}"}, args.requests)
            api = timed_get(f"http://127.0.0.1:{port}/v1/clusters/{cluster.pk}/jobs", {"Authorization": f"Bearer {token}"}, args.requests)
            rows.append((count, in_cache, polls, poll.squeue_seconds, page, api))
            executor.run(account, ["scancel", f"--user={USER}"], timeout=120)
    finally:
        daphne.terminate()
        daphne.wait(timeout=20)

    print(f"Job cache benchmark ({os.cpu_count()} CPUs, database {django.db.connection.vendor}, {args.requests} requests each)")
    print(f"{'queued':>8} {'cached':>8} {'poll first / median s':>22} {'squeue s':>9} {'My jobs p50/p95 ms':>19} {'API p50/p95 ms':>15}")
    for count, cached, polls, squeue_s, page, api in rows:
        print(f"{count:>8} {cached:>8} {polls[0]:>10.2f} / {statistics.median(polls[1:]):<9.2f} {squeue_s:>9.2f} "
              f"{page[0]:>8.1f} / {page[1]:<8.1f} {api[0]:>6.1f} / {api[1]:<6.1f}")
    print("targets: poll < 2 s at 10k; page and API p95 < 100 ms and about the same at 1k and 10k")
    print(f"reproduce: cd {BASE} && .venv/bin/python bench/jobs.py --counts {args.counts} --requests {args.requests}")


if __name__ == "__main__":
    main()
