"""Okta event hook → live terminals closed: one person's terminals spread over the daphne processes behind nginx,
then an Okta-shaped `user.lifecycle.deactivate` (or `group.user_membership.remove`) delivery POSTed to the
portal's hook; how long until the last of their sockets is closed.

Needs the production topology of scripts/prod-local.sh running, with this checkout's code (its migrations
applied: `up` runs migrate), as root: the person is a real POSIX user, onboarded once through
accounts/lifecycle.py and given access back between runs, so every run locks a real account too. The demo
tenant's Okta event-hook secret is replaced by a new one at the start (the hook is refused with the old one).

    scripts/prod-local.sh up
    .venv/bin/python bench/okta_hook.py [--sessions 50] [--runs 10] [--event deactivate|remove] [--url http://127.0.0.1:8080]

Prints one line per run and p50/p99 over the runs of: the time from sending the delivery to the last socket
closed, to the last exit status, to the first exit status, and to the hook's answer.
"""

import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.live_terminals import cookie_for, ended, errors, open_terminals, print_summary, prod_arguments, use_instance  # noqa: E402

parser = prod_arguments(__doc__, email="bench-okta-hook@demo.test")
parser.add_argument("--event", choices=("deactivate", "remove"), default="deactivate",
                    help="user.lifecycle.deactivate, or group.user_membership.remove of the only group giving access")
args = parser.parse_args()
use_instance(args.state)
import requests  # noqa: E402

from accounts import lifecycle  # noqa: E402
from accounts.models import AccessRule, Membership, Tenant, User  # noqa: E402
from clusters.models import Cluster, ClusterAccount  # noqa: E402
from okta import services  # noqa: E402
from okta.models import HookEvent, OktaConnection  # noqa: E402

GROUP = "bench-okta-hook"


def setup() -> str:
    """The demo tenant's Okta connection with a new hook secret, and the rule the person's access comes from."""
    tenant = Tenant.objects.get(slug="demo")
    cluster = Cluster.objects.get(tenant=tenant, slug="local")
    connection = OktaConnection.objects.filter(tenant=tenant).first()
    if connection is None:
        connection = OktaConnection.objects.create(tenant=tenant, org_url="https://bench.okta.invalid")
    rule, _ = AccessRule.objects.get_or_create(tenant=tenant, group=GROUP, defaults={"role": "member"})
    rule.clusters.set([cluster])
    return services.new_hook_secret(connection, actor=None)


def person() -> User:
    """The person, with access from the group (IdP-sourced, so the hook's offboarding is undone by the group)."""
    tenant = Tenant.objects.get(slug="demo")
    cluster = Cluster.objects.get(tenant=tenant, slug="local")
    from accounts.services import ensure_user
    user = ensure_user(email=args.email, full_name="Okta hook bench")
    lifecycle.sync_groups(tenant=tenant, user=user, groups=[GROUP], source="bench/okta_hook.py")
    membership = Membership.objects.get(tenant=tenant, user=user)
    assert membership.status == "active", (membership.status, membership.status_source)
    account = ClusterAccount.objects.get(user=user, cluster=cluster)
    assert account.state == "active", (account.state, account.head_node_error)
    return User.objects.get(pk=user.pk)


def delivery(user: User) -> tuple[str, str]:
    event_id = str(uuid.uuid4())
    target = [{"id": f"00ubench{user.pk}", "type": "User", "alternateId": user.email, "displayName": "Okta hook bench"}]
    event_type = "user.lifecycle.deactivate"
    if args.event == "remove":
        event_type = "group.user_membership.remove"
        target.append({"id": "00gbench", "type": "UserGroup", "alternateId": "unknown", "displayName": GROUP})
    body = {"eventType": "com.okta.event_hook", "eventTypeVersion": "1.0", "cloudEventsVersion": "0.1",
            "source": "https://bench.okta.invalid/api/v1/eventHooks/whobench", "eventId": str(uuid.uuid4()),
            "data": {"events": [{"uuid": event_id, "published": "2026-12-02T00:00:00.000Z", "eventType": event_type,
                                 "version": "0", "severity": "INFO", "target": target}]}}
    return event_id, json.dumps(body)


async def one_run(number: int, secret: str) -> dict:
    user = await asyncio.to_thread(person)
    cookie = await asyncio.to_thread(cookie_for, user)
    records, tasks, workers = await open_terminals(args.url, cookie, args.sessions)
    event_id, body = delivery(user)
    session = requests.Session()
    t0 = time.monotonic()
    answer = await asyncio.to_thread(session.post, f"{args.url}/hooks/okta/demo/", data=body, timeout=30,
                                     headers={"Authorization": secret, "Content-Type": "application/json"})
    answered = time.monotonic() - t0
    assert answer.status_code == 200, (answer.status_code, answer.text)
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    reasons = {r.get("reason") for r in records}
    row = await asyncio.to_thread(lambda: HookEvent.objects.filter(event_id=event_id).first())
    result = {**ended(records, t0), "answer": answered}
    print(f"run {number:2d}: {args.sessions} sessions over workers {workers}: "
          f"first exit status {result['first_exit'] * 1000:.0f} ms, last {result['last_exit'] * 1000:.0f} ms, last socket closed "
          f"{result['last_close'] * 1000:.0f} ms after the delivery was sent; the hook answered in {answered * 1000:.0f} ms "
          f"({answer.json()}); reasons {reasons}; event {row.status if row else '?'}: {row.result if row else ''}{errors(records)}",
          flush=True)
    return result


async def main():
    secret = await asyncio.to_thread(setup)
    results = [await one_run(n, secret) for n in range(1, args.runs + 1)]
    print(f"\n{args.runs} runs of {args.sessions} sessions ({args.event}), load average {os.getloadavg()[0]:.1f}:")
    print_summary(results, [("last_close", "last socket closed"), ("last_exit", "last exit status"),
                            ("first_exit", "first exit status"), ("answer", "hook answered")])
    await asyncio.to_thread(person)  # leave the person with access, as the demo's data was


asyncio.run(main())
