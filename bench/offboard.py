"""Offboarding under load: one person's live terminals spread over the daphne processes behind nginx, then
`offboard_person()`; how long until the last of their sockets is closed.

Needs the production topology of scripts/prod-local.sh running (as root: the person is a real POSIX user,
onboarded once through accounts/lifecycle.py and reinstated between runs, so every run locks a real
account too). Usage:

    scripts/prod-local.sh up
    .venv/bin/python bench/offboard.py [--sessions 50] [--runs 10] [--url http://127.0.0.1:8080]

Prints one line per run and p50/p99 over the runs of: the time to the last exit status, the time to the
last socket closed, and how long the offboard call itself took (it also locks the account on the head node).
"""

import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.live_terminals import cookie_for, ended, errors, open_terminals, print_summary, prod_arguments, use_instance  # noqa: E402

args = prod_arguments(__doc__, email="bench-offboard@demo.test").parse_args()
use_instance(args.state)
from accounts import lifecycle  # noqa: E402
from accounts.models import Membership, Tenant, User  # noqa: E402
from clusters.models import Cluster, ClusterAccount  # noqa: E402


def person() -> User:
    tenant = Tenant.objects.get(slug="demo")
    cluster = Cluster.objects.get(tenant=tenant, slug="local")
    membership = Membership.objects.filter(tenant=tenant, user__email=args.email).first()
    if membership is None:
        membership = lifecycle.onboard_person(tenant=tenant, email=args.email, role="member", clusters=[cluster], actor=None,
                                              full_name="Offboarding bench")
    elif membership.status != Membership.Status.ACTIVE:
        lifecycle.reinstate_person(tenant=tenant, user=membership.user, actor=None, reason="bench/offboard.py: next run")
    account = ClusterAccount.objects.get(user=membership.user, cluster=cluster)
    assert account.state == "active", (account.state, account.head_node_error)
    return User.objects.get(pk=membership.user_id)


async def one_run(number: int) -> dict:
    user = await asyncio.to_thread(person)
    cookie = await asyncio.to_thread(cookie_for, user)
    records, tasks, workers = await open_terminals(args.url, cookie, args.sessions)
    tenant = await asyncio.to_thread(Tenant.objects.get, slug="demo")
    t0 = time.monotonic()
    report = await asyncio.to_thread(lifecycle.offboard_person, tenant=tenant, user=user, actor=None,
                                     reason=f"bench/offboard.py run {number}")
    call = time.monotonic() - t0
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    reasons = {r.get("reason") for r in records}
    result = {**ended(records, t0), "call": call, "workers": workers, "reasons": reasons, "ended": len(report.sessions_ended),
              "locked": report.clusters_locked, "pending": report.clusters_pending}
    print(f"run {number:2d}: {args.sessions} sessions over workers {workers}: "
          f"first exit status {result['first_exit'] * 1000:.0f} ms, last {result['last_exit'] * 1000:.0f} ms, last socket closed {result['last_close'] * 1000:.0f} ms "
          f"after the call started; the call took {call * 1000:.0f} ms (ended {result['ended']}, locked {report.clusters_locked}"
          f"{', pending ' + str(report.clusters_pending) if report.clusters_pending else ''}); reasons {reasons}{errors(records)}",
          flush=True)
    return result


async def main():
    results = [await one_run(n) for n in range(1, args.runs + 1)]
    print(f"\n{args.runs} runs of {args.sessions} sessions, load average {os.getloadavg()[0]:.1f}:")
    print_summary(results, [("last_close", "last socket closed"), ("last_exit", "last exit status"),
                            ("first_exit", "first exit status"), ("call", "offboard call")])
    # Leave the person reinstated, so the demo's data is as before.
    await asyncio.to_thread(person)


asyncio.run(main())
