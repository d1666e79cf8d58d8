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

import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.live_terminals import cookie_for, ended, errors, open_terminals, print_summary, prod_arguments, use_instance  # noqa: E402

parser = prod_arguments(__doc__, email="bench-scim@demo.test")
parser.add_argument("--group", default="bench-scim")
args = parser.parse_args()
use_instance(args.state)
import requests  # noqa: E402

from accounts.models import Membership, Tenant, User  # noqa: E402
from accounts.services import ensure_access_rule  # noqa: E402
from clusters.models import Cluster, ClusterAccount  # noqa: E402
from scim.models import ScimUser  # noqa: E402
from scim.tokens import create_scim_token, revoke_scim_token  # noqa: E402

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


async def one_run(number: int, idp: Idp) -> dict:
    user, user_id = await asyncio.to_thread(provision, idp)
    cookie = await asyncio.to_thread(cookie_for, user)
    records, tasks, workers = await open_terminals(args.url, cookie, args.sessions)
    body = {"schemas": [PATCH_OP], "Operations": [{"op": "Replace", "path": "active", "value": "False"}]}
    t0 = time.monotonic()
    answer = await asyncio.to_thread(idp, "PATCH", f"/Users/{user_id}", body)
    call = time.monotonic() - t0
    assert answer["active"] is False, answer
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    reasons = {r.get("reason") for r in records}
    result = {**ended(records, t0), "call": call, "workers": workers, "reasons": reasons}
    print(f"run {number:2d}: {args.sessions} sessions over workers {workers}: "
          f"first exit status {result['first_exit'] * 1000:.0f} ms, last {result['last_exit'] * 1000:.0f} ms, "
          f"last socket closed {result['last_close'] * 1000:.0f} ms after the SCIM request was sent; "
          f"its answer came after {call * 1000:.0f} ms; reasons {reasons}{errors(records)}", flush=True)
    return result


async def main():
    tenant = await asyncio.to_thread(Tenant.objects.get, slug="demo")
    cluster = await asyncio.to_thread(Cluster.objects.get, tenant=tenant, slug="local")
    await asyncio.to_thread(ensure_access_rule, tenant=tenant, group=args.group, role="member", clusters=[cluster])
    token, text = await asyncio.to_thread(create_scim_token, tenant=tenant, name="bench/scim_offboard.py")
    idp = Idp(text)
    try:
        results = [await one_run(n, idp) for n in range(1, args.runs + 1)]
        print(f"\n{args.runs} runs of {args.sessions} sessions, load average {os.getloadavg()[0]:.1f}:")
        print_summary(results, [("last_close", "last socket closed"), ("last_exit", "last exit status"),
                                ("first_exit", "first exit status"), ("call", "SCIM answer")])
        await asyncio.to_thread(provision, idp)  # leave the person active, as before
    finally:
        await asyncio.to_thread(revoke_scim_token, token)


asyncio.run(main())
