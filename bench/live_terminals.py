"""What the offboarding benches share (bench/offboard.py, bench/okta_hook.py, bench/scim_offboard.py): their options, this process on the
instance scripts/prod-local.sh runs, a signed-in session cookie, a terminal that acknowledges output like the
browser and records when it ended, and percentiles.

    parser = prod_arguments(__doc__, email="bench-…@demo.test")   # then add its own options
    args = parser.parse_args()
    use_instance(args.state)                                       # its database and Redis; django.setup()
"""

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import time
from pathlib import Path

ACK = 0x03
TERMINAL_PATH = "/ws/t/demo/c/local/terminal/?cols=80&rows=24"
REPO = Path(__file__).resolve().parent.parent


def prod_arguments(doc: str, *, email: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('CLUSTERRA_PROD_PORT', '8080')}")
    parser.add_argument("--state", default=os.environ.get("CLUSTERRA_PROD_DIR", str(REPO / ".prod-local")))
    parser.add_argument("--email", default=email)
    return parser


def use_instance(state: str) -> None:
    """The instance's own environment (prod-local.sh writes it), so this process uses its database and Redis."""
    for line in Path(state, "clusterra.env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            name, value = line.split("=", 1)
            os.environ[name] = value
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clusterra.settings")
    import django
    django.setup()


def cookie_for(user) -> str:
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore
    session = SessionStore()
    session.update({SESSION_KEY: str(user.pk), BACKEND_SESSION_KEY: "accounts.backends.PasswordBackend",
                    HASH_SESSION_KEY: user.get_session_auth_hash()})
    session.create()
    return session.session_key


async def terminal(url: str, cookie: str, record: dict, connected, path: str = TERMINAL_PATH):
    """One terminal through `url` until the portal closes it: record["worker"], ["exit_at"], ["reason"], ["closed_at"]."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed
    ws_url = url.replace("http", "ws", 1) + path
    async with connect(ws_url, origin=url, additional_headers={"Cookie": f"sessionid={cookie}"},
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


async def open_terminals(url: str, cookie: str, count: int) -> tuple[list[dict], list[asyncio.Task], dict]:
    """`count` terminals, each connected: their records, the tasks that end when their sockets close, and how
    many each portal process holds."""
    records = [{} for _ in range(count)]
    events = [asyncio.Event() for _ in records]
    tasks = [asyncio.create_task(terminal(url, cookie, r, e)) for r, e in zip(records, events, strict=True)]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 120)
    workers = {}
    for r in records:
        workers[r.get("worker")] = workers.get(r.get("worker"), 0) + 1
    return records, tasks, dict(sorted(workers.items()))


def ended(records: list[dict], t0: float) -> dict:
    """Seconds from t0 to the first and last exit status (inf if one never came) and to the last socket closed."""
    exits = [r["exit_at"] - t0 for r in records if "exit_at" in r]
    return {"first_exit": min(exits, default=float("inf")),
            "last_exit": max(exits) if len(exits) == len(records) else float("inf"),
            "last_close": max(r["closed_at"] - t0 for r in records)}


def errors(records: list[dict]) -> str:
    found = {r["error"] for r in records if "error" in r}
    return f"; errors {found}" if found else ""


def print_summary(results: list[dict], rows: list[tuple[str, str]]) -> None:
    for key, label in rows:
        values = [r[key] * 1000 for r in results]
        print(f"  {label:<20} p50 {statistics.median(values):7.0f} ms   p99 {percentile(values, 99):7.0f} ms   "
              f"max {max(values):7.0f} ms")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[rank]
