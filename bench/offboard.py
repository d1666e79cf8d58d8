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

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--sessions", type=int, default=50)
parser.add_argument("--runs", type=int, default=10)
parser.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('CLUSTERRA_PROD_PORT', '8080')}")
parser.add_argument("--state", default=os.environ.get("CLUSTERRA_PROD_DIR", str(REPO / ".prod-local")))
parser.add_argument("--email", default="bench-offboard@demo.test")
args = parser.parse_args()

# The instance's own environment (prod-local.sh writes it), so this process uses its database and Redis.
for line in Path(args.state, "clusterra.env").read_text().splitlines():
    if "=" in line and not line.lstrip().startswith("#"):
        name, value = line.split("=", 1)
        os.environ[name] = value
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clusterra.settings")
import django  # noqa: E402

django.setup()
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY  # noqa: E402
from django.contrib.sessions.backends.db import SessionStore  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from accounts import lifecycle  # noqa: E402
from accounts.models import Membership, Tenant, User  # noqa: E402
from clusters.models import Cluster, ClusterAccount  # noqa: E402

ACK = 0x03


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


def cookie_for(user: User) -> str:
    session = SessionStore()
    session.update({SESSION_KEY: str(user.pk), BACKEND_SESSION_KEY: "accounts.backends.PasswordBackend",
                    HASH_SESSION_KEY: user.get_session_auth_hash()})
    session.create()
    return session.session_key


async def terminal(cookie: str, record: dict, connected: asyncio.Event):
    ws_url = args.url.replace("http", "ws", 1) + "/ws/t/demo/c/local/terminal/?cols=80&rows=24"
    async with connect(ws_url, origin=args.url, additional_headers={"Cookie": f"sessionid={cookie}"},
                       open_timeout=60, max_size=None, ping_interval=None) as ws:
        try:
            async for frame in ws:
                if frame[0] == 0x81:  # output: acknowledge it like the browser does
                    with contextlib.suppress(ConnectionClosed):  # closing: the exit status may still be queued
                        await ws.send(bytes([ACK]) + (len(frame) - 1).to_bytes(4, "big"))
                elif frame[0] == 0x82:
                    message = json.loads(frame[1:])
                    if message["type"] == "connected":
                        record["worker"] = message.get("worker")
                        connected.set()
                    elif message["type"] == "exit":
                        record["exit_at"], record["reason"] = time.monotonic(), message.get("reason")
        except Exception as exc:  # noqa: BLE001 - how the socket ended is recorded below
            record["error"] = type(exc).__name__
    record["closed_at"] = time.monotonic()


async def one_run(number: int) -> dict:
    user = await asyncio.to_thread(person)
    cookie = await asyncio.to_thread(cookie_for, user)
    records = [{} for _ in range(args.sessions)]
    events = [asyncio.Event() for _ in records]
    tasks = [asyncio.create_task(terminal(cookie, r, e)) for r, e in zip(records, events, strict=True)]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 120)
    workers = {}
    for r in records:
        workers[r.get("worker")] = workers.get(r.get("worker"), 0) + 1
    tenant = await asyncio.to_thread(Tenant.objects.get, slug="demo")
    t0 = time.monotonic()
    report = await asyncio.to_thread(lifecycle.offboard_person, tenant=tenant, user=user, actor=None,
                                     reason=f"bench/offboard.py run {number}")
    call = time.monotonic() - t0
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    exits = [r["exit_at"] - t0 for r in records if "exit_at" in r]
    closes = [r["closed_at"] - t0 for r in records]
    reasons = {r.get("reason") for r in records}
    result = {"first_exit": min(exits, default=float("inf")),
              "last_exit": max(exits) if len(exits) == len(records) else float("inf"), "last_close": max(closes),
              "call": call, "workers": workers, "reasons": reasons, "ended": len(report.sessions_ended),
              "locked": report.clusters_locked, "pending": report.clusters_pending}
    print(f"run {number:2d}: {args.sessions} sessions over workers {dict(sorted(workers.items()))}: "
          f"first exit status {result['first_exit'] * 1000:.0f} ms, last {result['last_exit'] * 1000:.0f} ms, last socket closed {result['last_close'] * 1000:.0f} ms "
          f"after the call started; the call took {call * 1000:.0f} ms (ended {result['ended']}, locked {report.clusters_locked}"
          f"{', pending ' + str(report.clusters_pending) if report.clusters_pending else ''}); reasons {reasons}"
          f"{'; errors ' + str({r['error'] for r in records if 'error' in r}) if any('error' in r for r in records) else ''}",
          flush=True)
    return result


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[rank]


async def main():
    results = [await one_run(n) for n in range(1, args.runs + 1)]
    print(f"\n{args.runs} runs of {args.sessions} sessions, load average {os.getloadavg()[0]:.1f}:")
    for key, label in (("last_close", "last socket closed"), ("last_exit", "last exit status"), ("first_exit", "first exit status"),
                       ("call", "offboard call")):
        values = [r[key] * 1000 for r in results]
        print(f"  {label:<20} p50 {statistics.median(values):7.0f} ms   p99 {percentile(values, 99):7.0f} ms   "
              f"max {max(values):7.0f} ms")
    # Leave the person reinstated, so the demo's data is as before.
    await asyncio.to_thread(person)


asyncio.run(main())
