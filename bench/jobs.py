#!/usr/bin/env python3
"""Job cache benchmark: a poll (squeue + parse + upsert) and page/API latency with 1k to 50k jobs queued.

    .venv/bin/python bench/jobs.py [--counts 1000,10000,50000] [--requests 200]

Needs root and the live local Slurm (scripts/slurm-local.sh up). For each count it submits held arrays
of that many tasks in all (at most 10,000 per array, Slurm's MaxArraySize here) as the POSIX user
`clusterra-bench` (squeue --array lists every task) and times refresh_jobs(): the first poll (every row
new), three steady-state polls (nothing changed in the queue) and one poll after 1 % of the tasks changed
(half of them held by the admin, so their reason changes; half cancelled, so they leave the queue), and
checks that the cache then says exactly that. Then it measures p50/p95 of the My jobs page and of GET
/v1/clusters/{id}/jobs over HTTP against daphne, and cancels the arrays. The database is a fresh SQLite
file (the embedded default) unless CLUSTERRA_DATABASE_URL is set.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE))
DATA = tempfile.mkdtemp(prefix="clusterra-jobs-bench-")
os.environ.setdefault("CLUSTERRA_DATA_DIR", DATA)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clusterra.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402

from accounts.services import create_api_token, ensure_tenant, ensure_user, set_membership  # noqa: E402
from bench.common import posix_user, running_daphne, session_cookie, timed_get  # noqa: E402
from clusters.executors import LocalExecutor  # noqa: E402
from clusters.services import configure_polling, ensure_cluster, map_account  # noqa: E402
from jobs.models import Job  # noqa: E402
from jobs.services import PollError, refresh_jobs  # noqa: E402

USER = "clusterra-bench"
MAX_ARRAY = 10_000  # tasks per array; the local Slurm's MaxArraySize is 10001


def timed_poll(cluster):
    """One refresh_jobs(): wall time, the result, and this process's CPU time (all of the work with SQLite;
    without the server's share with PostgreSQL). If slurmctld is briefly unreachable, wait and poll again."""
    deadline = time.monotonic() + 120
    while True:
        start, cpu = time.perf_counter(), time.process_time()
        try:
            result = refresh_jobs(cluster)
        except PollError as exc:
            if time.monotonic() > deadline:
                raise
            print(f"poll failed, retrying: {exc}", file=sys.stderr)
            time.sleep(2)
            continue
        return time.perf_counter() - start, result, time.process_time() - cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1000,10000,50000")
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
    cookie = session_cookie(user)

    rows = []
    with running_daphne(DATA) as port:
        executor = LocalExecutor()
        for count in [int(c) for c in args.counts.split(",")]:
            executor.run(account, ["scancel", f"--user={USER}"], timeout=120)
            arrays = []
            for first in range(0, count, MAX_ARRAY):  # task ids must stay below MaxArraySize: each array is 1-n
                result = executor.run(account, ["sbatch", "--parsable", "--hold", f"--array=1-{min(MAX_ARRAY, count - first)}",
                                                f"--chdir={entry.pw_dir}", "--job-name=bench", "--wrap=true"], timeout=120)
                assert result.ok, result.error_text()
                arrays.append(result.stdout.decode().strip().split(";")[0])
            first_poll, _, first_cpu = timed_poll(cluster)
            steady = [timed_poll(cluster) for _ in range(3)]
            # 1 % of the tasks change: half get another hold reason (they stay queued), half are cancelled
            # (pending tasks that are cancelled leave squeue at once).
            half = max(1, count // 200)
            subprocess.run(["scontrol", "hold", f"{arrays[0]}_[1-{half}]"], check=True, timeout=120, capture_output=True)
            result = executor.run(account, ["scancel", f"{arrays[0]}_[{half + 1}-{2 * half}]"], timeout=120)
            assert result.ok, result.error_text()
            after_change, poll, change_cpu = timed_poll(cluster)
            # This round's arrays only: tasks cancelled in an earlier round stay in squeue for MinJobAge.
            mine = Job.objects.filter(cluster=cluster, array_job_id__in=[int(a) for a in arrays])
            in_cache = mine.filter(in_queue=True).count()
            held, left = mine.filter(in_queue=True, reason="JobHeldAdmin").count(), mine.filter(in_queue=False).count()
            assert (in_cache, held, left) == (count - half, half, half), (in_cache, held, left)  # right, not only fast
            page = timed_get(f"http://127.0.0.1:{port}/t/bench/c/local/jobs/", cookie, args.requests)
            api = timed_get(f"http://127.0.0.1:{port}/v1/clusters/{cluster.pk}/jobs", {"Authorization": f"Bearer {token}"}, args.requests)
            rows.append((count, in_cache, first_poll, statistics.median(s for s, _, _ in steady), after_change,
                         (first_cpu, statistics.median(c for _, _, c in steady), change_cpu),
                         getattr(steady[-1][1], "jobs_written", None), getattr(poll, "jobs_written", None),
                         poll.squeue_seconds, page, api))
            executor.run(account, ["scancel", f"--user={USER}"], timeout=120)

    print(f"Job cache benchmark ({os.cpu_count()} CPUs, database {django.db.connection.vendor}, {args.requests} requests each, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end)")
    print(f"{'queued':>8} {'cached':>8} {'poll first / steady / 1% changed s':>35} {'poll CPU s, same three':>24} "
          f"{'rows written':>14} {'squeue s':>9} {'My jobs p50/p95 ms':>19} {'API p50/p95 ms':>15}")
    for count, cached, first_s, steady_s, changed_s, cpu, steady_n, changed_n, squeue_s, page, api in rows:
        written = "–" if steady_n is None else f"{steady_n} / {changed_n}"
        print(f"{count:>8} {cached:>8} {first_s:>15.2f} / {steady_s:<6.2f} / {changed_s:<8.2f} "
              f"{cpu[0]:>8.2f} / {cpu[1]:.2f} / {cpu[2]:<6.2f} {written:>14} {squeue_s:>9.2f} "
              f"{page[0]:>8.1f} / {page[1]:<8.1f} {api[0]:>6.1f} / {api[1]:<6.1f}")
    print("targets: poll < 1 s at 10k; page and API p95 < 50 ms and about the same at 1k and 10k")
    print(f"reproduce: cd {BASE} && .venv/bin/python bench/jobs.py --counts {args.counts} --requests {args.requests}")


if __name__ == "__main__":
    main()
