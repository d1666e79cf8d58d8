"""A SCIM deactivation under load: one person's live terminals spread over the daphne processes behind nginx,
then the IdP's `PATCH /scim/v2/Users/<id>` with `active: "False"` (as Entra sends it); how long until the last
of their sockets is closed.

Needs the production topology of scripts/prod-local.sh running (as root: the person is a real POSIX user,
provisioned over SCIM into the group `bench-scim`, which an access rule maps to the demo's local cluster, and
reactivated over SCIM between runs, so every run also locks and unlocks a real account). Usage:

    scripts/prod-local.sh up
    .venv/bin/python bench/scim_offboard.py [--sessions 50] [--runs 10] [--url http://127.0.0.1:8080]

Prints one line per run and p50/p99 over the runs of: the time to the last socket closed, the last exit
status, and the SCIM request's answer (it also locks the account on the head node), each from the moment the
request is sent. The bench's SCIM token is revoked at the end; the person is left active.
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
parser.add_argument("--email", default="bench-scim@demo.test")
parser.add_argument("--group", default="bench-scim")
args = parser.parse_args()

# The instance's own environment (prod-local.sh writes it), so this process uses its database and Redis.
for line in Path(args.state, "clusterra.env").read_text().splitlines():
    if "=" in line and not line.lstrip().startswith("#"):
        name, value = line.split("=", 1)
        os.environ[name] = value
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clusterra.settings")
import django  # noqa: E402

django.setup()
import requests  # noqa: E402
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY  # noqa: E402
from django.contrib.sessions.backends.db import SessionStore  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from accounts.models import Membership, Tenant, User  # noqa: E402
from accounts.services import ensure_access_rule  # noqa: E402
from clusters.models import Cluster, ClusterAccount  # noqa: E402
from scim.models import ScimUser  # noqa: E402
from scim.tokens import create_scim_token, revoke_scim_token  # noqa: E402

ACK = 0x03
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"


class Idp:
    """The IdP's side: SCIM requests through nginx with the bench's token."""

    def __init__(self, token: str):
        self.http = requests.Session()
        self.http.headers.update({"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json"})

    def __call__(self, method: str, path: str, body=None, **params) -> dict:
        r = self.http.request(method, f"{args.url}/scim/v2{path}", data=json.dumps(body) if body is not None else None,
                              params=params or None, timeout=120)
        if r.status_code >= 400:
            raise SystemExit(f"SCIM {method} {path}: {r.status_code} {r.text[:500]}")
        return r.json() if r.content else {}


def provision(idp: Idp) -> tuple[User, str]:
    """The person active over SCIM, a member of the group that gives the local cluster; their portal user and id."""
    found = idp("GET", "/Users", filter=f'userName eq "{args.email}"')
    if found["totalResults"]:
        user_id = found["Resources"][0]["id"]
        if not found["Resources"][0].get("active", True):
            idp("PATCH", f"/Users/{user_id}", {"schemas": [PATCH_OP], "Operations": [
                {"op": "Replace", "path": "active", "value": "True"}]})
    else:
        user_id = idp("POST", "/Users", {"schemas": [USER_SCHEMA], "userName": args.email, "active": True,
                                         "displayName": "SCIM offboarding bench",
                                         "emails": [{"value": args.email, "primary": True, "type": "work"}]})["id"]
    groups = idp("GET", "/Groups", filter=f'displayName eq "{args.group}"', excludedAttributes="members")
    if groups["totalResults"]:
        idp("PATCH", f"/Groups/{groups['Resources'][0]['id']}", {"schemas": [PATCH_OP], "Operations": [
            {"op": "Add", "path": "members", "value": [{"value": user_id}]}]})
    else:
        idp("POST", "/Groups", {"schemas": [GROUP_SCHEMA], "displayName": args.group, "members": [{"value": user_id}]})
    user = ScimUser.objects.select_related("user").get(scim_id=user_id).user
    membership = Membership.objects.get(tenant__slug="demo", user=user)
    account = ClusterAccount.objects.get(user=user, cluster__tenant__slug="demo", cluster__slug="local")
    assert membership.status == "active" and account.state == "active", (membership.status, account.state, account.head_node_error)
    return User.objects.get(pk=user.pk), user_id


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


async def one_run(number: int, idp: Idp) -> dict:
    user, user_id = await asyncio.to_thread(provision, idp)
    cookie = await asyncio.to_thread(cookie_for, user)
    records = [{} for _ in range(args.sessions)]
    events = [asyncio.Event() for _ in records]
    tasks = [asyncio.create_task(terminal(cookie, r, e)) for r, e in zip(records, events, strict=True)]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 120)
    workers = {}
    for r in records:
        workers[r.get("worker")] = workers.get(r.get("worker"), 0) + 1
    body = {"schemas": [PATCH_OP], "Operations": [{"op": "Replace", "path": "active", "value": "False"}]}
    t0 = time.monotonic()
    answer = await asyncio.to_thread(idp, "PATCH", f"/Users/{user_id}", body)
    call = time.monotonic() - t0
    assert answer["active"] is False, answer
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    exits = [r["exit_at"] - t0 for r in records if "exit_at" in r]
    closes = [r["closed_at"] - t0 for r in records]
    reasons = {r.get("reason") for r in records}
    result = {"first_exit": min(exits, default=float("inf")),
              "last_exit": max(exits) if len(exits) == len(records) else float("inf"), "last_close": max(closes),
              "call": call, "workers": workers, "reasons": reasons}
    print(f"run {number:2d}: {args.sessions} sessions over workers {dict(sorted(workers.items()))}: "
          f"first exit status {result['first_exit'] * 1000:.0f} ms, last {result['last_exit'] * 1000:.0f} ms, "
          f"last socket closed {result['last_close'] * 1000:.0f} ms after the SCIM request was sent; "
          f"its answer came after {call * 1000:.0f} ms; reasons {reasons}"
          f"{'; errors ' + str({r['error'] for r in records if 'error' in r}) if any('error' in r for r in records) else ''}",
          flush=True)
    return result


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[rank]


async def main():
    tenant = await asyncio.to_thread(Tenant.objects.get, slug="demo")
    cluster = await asyncio.to_thread(Cluster.objects.get, tenant=tenant, slug="local")
    await asyncio.to_thread(ensure_access_rule, tenant=tenant, group=args.group, role="member", clusters=[cluster])
    token, text = await asyncio.to_thread(create_scim_token, tenant=tenant, name="bench/scim_offboard.py")
    idp = Idp(text)
    try:
        results = [await one_run(n, idp) for n in range(1, args.runs + 1)]
        print(f"\n{args.runs} runs of {args.sessions} sessions, load average {os.getloadavg()[0]:.1f}:")
        for key, label in (("last_close", "last socket closed"), ("last_exit", "last exit status"),
                           ("first_exit", "first exit status"), ("call", "SCIM answer")):
            values = [r[key] * 1000 for r in results]
            print(f"  {label:<20} p50 {statistics.median(values):7.0f} ms   p99 {percentile(values, 99):7.0f} ms   "
                  f"max {max(values):7.0f} ms")
        await asyncio.to_thread(provision, idp)  # leave the person active, as before
    finally:
        await asyncio.to_thread(revoke_scim_token, token)


asyncio.run(main())
