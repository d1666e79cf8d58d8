#!/usr/bin/env python3
"""Dashboard benchmark: p50/p95 of the home page (clusters/dashboard.py) with 1k and 10k jobs in the cache.

    .venv/bin/python bench/dashboard.py [--counts 1000,10000] [--requests 200]

The jobs are written straight into the job cache (no Slurm needed): for each count, that many jobs of the
signed-in person on one cluster (1 % running or pending, the rest finished, as a long-lived account
looks), as many of another person of the same tenant on the same cluster, and their quotas and a detached
terminal session. The cluster has polling configured, so each page also reads the poller's state from
Redis. Then it measures p50/p95 of GET / over HTTP against daphne, after 10 warm-up requests. The database
is a fresh SQLite file (the embedded default) unless CLUSTERRA_DATABASE_URL is set (then its jobs tables
are emptied for the bench's cluster first).
"""

import argparse
import os
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

BASE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE))
DATA = tempfile.mkdtemp(prefix="clusterra-dashboard-bench-")
os.environ.setdefault("CLUSTERRA_DATA_DIR", DATA)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clusterra.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.utils import timezone  # noqa: E402

from accounts.services import ensure_tenant, ensure_user, set_membership  # noqa: E402
from bench.common import fetch, running_daphne, session_cookie, timed_get  # noqa: E402
from clusters.models import AccountUsage  # noqa: E402
from clusters.services import configure_polling, ensure_cluster, map_account  # noqa: E402
from jobs.models import Job  # noqa: E402
from terminal.models import TerminalSession  # noqa: E402

STATES = ["COMPLETED", "COMPLETED", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"]


def seed_jobs(cluster, account, count: int, prefix: int) -> None:
    """`count` jobs of `account`, newest first by id; 1 % still in the queue (the newest ones)."""
    now = timezone.now()
    queued = max(1, count // 100)
    rows = []
    for i in range(count):
        in_queue = i < queued
        submitted = now - timedelta(minutes=i)
        rows.append(Job(
            cluster=cluster, owner=account, job_id=str(prefix + i), posix_user=account.posix_username,
            name=f"bench-{i}", partition="batch", state=("RUNNING" if i % 2 else "PENDING") if in_queue else STATES[i % len(STATES)],
            in_queue=in_queue, submit_time=submitted, start_time=submitted + timedelta(seconds=30),
            end_time=None if in_queue else submitted + timedelta(minutes=5), time_limit=2 * 86400,
            exit_code=None if in_queue else i % 3, last_seen_at=now,
        ))
    Job.objects.bulk_create(rows, batch_size=2000)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1000,10000")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    tenant = ensure_tenant(slug="bench", name="Bench")
    cluster = ensure_cluster(tenant=tenant, slug="dash", name="Dashboard bench")
    configure_polling(cluster, posix_username="clusterra-poll", uid=60002)  # the page reads its (absent) poll state
    user = ensure_user(email="bench@bench.test", password=None)
    other = ensure_user(email="other@bench.test", password=None)
    for person in (user, other):
        set_membership(tenant=tenant, user=person, role="member")
    account = map_account(cluster=cluster, user=user, posix_username="benchuser", uid=60000)
    other_account = map_account(cluster=cluster, user=other, posix_username="benchother", uid=60001)
    AccountUsage.objects.update_or_create(account=account, defaults={
        "collected_at": timezone.now(), "attempted_at": timezone.now(),
        "associations": [{"cluster": "c", "account": "lab", "partition": "", "qos": ["normal"], "fairshare": None,
                          "limits": {"MaxWall": "2-00:00:00", "GrpTRESMins": "cpu=60000", "MaxTRES": "cpu=4,mem=8G"}}],
        "storage": [{"path": "/home/benchuser", "kind": "home", "source": "filesystem", "used": 10**11, "limit": 10**12,
                     "mounted_on": "/", "error": ""}]})
    TerminalSession.objects.filter(cluster=cluster).delete()
    now = timezone.now()
    TerminalSession.objects.create(user=user, cluster=cluster, account=account, posix_username="benchuser", backend="local",
                                   detached_at=now, reattach_until=now + timedelta(hours=1))
    headers = session_cookie(user)
    rows = []
    with running_daphne(DATA) as port:
        url = f"http://127.0.0.1:{port}/"
        for count in [int(c) for c in args.counts.split(",")]:
            Job.objects.filter(cluster=cluster).delete()
            seed_jobs(cluster, account, count, 1_000_000)
            seed_jobs(cluster, other_account, count, 5_000_000)
            timed_get(url, headers, 10)  # warm-up: connections, templates
            p50, p95 = timed_get(url, headers, args.requests)
            page = fetch(url, headers)
            # Right, not only fast: the newest jobs, the detached session and the quotas are on the page.
            assert ">1000000<" in page and ">5000000<" not in page and "detached, reattachable for" in page
            assert "Time limit per job" in page and page.count('class="dashboard-job"') == 2 * 10
            rows.append((count, p50, p95))

    print(f"Dashboard benchmark ({os.cpu_count()} CPUs, database {django.db.connection.vendor}, {args.requests} requests each, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end)")
    print(f"{'jobs of the user':>17} {'jobs in the cache':>18} {'dashboard p50 / p95 ms':>24}")
    for count, p50, p95 in rows:
        print(f"{count:>17} {2 * count:>18} {p50:>11.1f} / {p95:<8.1f}")
    print("target: p95 < 50 ms, and about the same at every size")
    print(f"reproduce: cd {BASE} && .venv/bin/python bench/dashboard.py --counts {args.counts} --requests {args.requests}")


if __name__ == "__main__":
    main()
