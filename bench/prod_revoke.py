"""Terminals through nginx over the daphne processes of scripts/prod-local.sh, held idle, then revoked.

Reports how many sessions the idle hold dropped and how long after revoke_terminal_sessions() each
browser got its exit status. With an instance up (same CLUSTERRA_PROD_DIR and CLUSTERRA_DEMO_PASSWORD):

    CLUSTERRA_PROD_DIR=... CLUSTERRA_DEMO_PASSWORD=... .venv/bin/python bench/prod_revoke.py http://127.0.0.1:8080 50 20
"""
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests
from websockets.asyncio.client import connect

url, n, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
state, password = os.environ["CLUSTERRA_PROD_DIR"], os.environ["CLUSTERRA_DEMO_PASSWORD"]
h = requests.Session()
t = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', h.get(url + "/accounts/login/").text).group(1)
assert h.post(url + "/accounts/login/", data={"csrfmiddlewaretoken": t, "username": "bob@demo.test", "password": password},
              headers={"Origin": url}, allow_redirects=False).status_code == 302
ENV_LINES = Path(state, "clusterra.env").read_text().splitlines()  # the instance's environment (prod-local.sh writes it)
ws_url = url.replace("http", "ws") + "/ws/t/demo/c/local/terminal/?cols=80&rows=24"


async def one(results):
    ws = await connect(ws_url, origin=url, additional_headers={"Cookie": "sessionid=" + h.cookies["sessionid"]},
                       open_timeout=60, max_size=None)
    rec = {"worker": None, "closed_early": None, "exit_at": None, "reason": None}
    results.append(rec)
    try:
        async for frame in ws:
            if frame[0] == 0x81:
                await ws.send(bytes([0x03]) + (len(frame) - 1).to_bytes(4, "big"))
            elif frame[0] == 0x82:
                msg = json.loads(frame[1:])
                if msg["type"] == "connected":
                    rec["worker"] = msg["worker"]
                elif msg["type"] == "exit":
                    rec["exit_at"], rec["reason"] = time.time(), msg["reason"]
    except Exception as exc:  # noqa: BLE001 - any way the socket died counts as dropped
        rec["closed_early"] = repr(exc)
    if rec["exit_at"] is None:
        rec["closed_early"] = rec["closed_early"] or f"closed {ws.close_code}"
        rec["closed_at"] = time.time()


async def main():
    results = []
    tasks = [asyncio.create_task(one(results)) for _ in range(n)]
    while sum(r["worker"] is not None for r in results) < n:
        await asyncio.sleep(0.1)
    by_worker = {w: sum(r["worker"] == w for r in results) for w in ("1", "2")}
    await asyncio.sleep(hold)
    dropped = sum(r["closed_early"] is not None or r["exit_at"] is not None for r in results)
    env = {**os.environ}
    for line in ENV_LINES:
        if "=" in line and not line.startswith("#"):
            name, value = line.split("=", 1)
            env[name] = value
    env.pop("CLUSTERRA_SECRET_KEY", None)
    code = ("import time; from accounts.models import User; from terminal.actions import revoke_terminal_sessions; "
            "u = User.objects.get(email='bob@demo.test'); t0 = time.time(); "
            "ids = revoke_terminal_sessions(actor=User.objects.get(email='alice@demo.test'), user=u); print('T0', t0, len(ids), 'T1', time.time())")
    out = await asyncio.to_thread(subprocess.run, [".venv/bin/python", "manage.py", "shell", "-c", code],
                                  cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env=env, capture_output=True, text=True, timeout=120)
    m = re.search(r"T0 ([\d.]+) (\d+)", out.stdout)
    assert m, out.stderr[-2000:]
    t0 = float(m.group(1))
    print("call took", float(re.search(r"T1 ([\d.]+)", out.stdout).group(1)) - t0, "s")
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    lat = sorted((r["exit_at"] - t0) * 1000 for r in results if r["exit_at"])
    reasons = {r["reason"] for r in results}
    print(f"{n} sessions (worker 1: {by_worker['1']}, worker 2: {by_worker['2']}) held {hold:.0f} s idle: "
          f"{dropped} dropped; revoked {m.group(2)}; reasons {reasons}; "
          f"end after the call: min {lat[0]:.0f} ms, p50 {statistics.median(lat):.0f} ms, max {lat[-1]:.0f} ms")

asyncio.run(main())
