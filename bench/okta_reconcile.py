"""Okta reconciliation of a large group: wall time of one run against a local Okta-shaped server.

The org (tests/okta_server.py, in a child process so its JSON encoding does not share this process's GIL) has
one group of --members people (default 10,000), served --page-size at a time with `Link` pagination and
--latency-ms added to each answer. The portal (its own PostgreSQL database, created and migrated if missing)
has a tenant whose one access rule names that group (member role, no cluster: head-node work is measured by
bench/offboard.py) and --members people, of whom --changes / 2 are no longer in the group and --changes / 2
of the group's people are not in the portal yet: each run plans and applies --changes changes (adds through
sync_groups, which creates the user, their POSIX identity and membership; removals through sync_groups
with no group, which offboards). Before each run the portal is put back as it was.

    .venv/bin/python bench/okta_reconcile.py [--members 10000] [--changes 100] [--runs 3] [--latency-ms 0]
        [--database-url postgres://postgres@127.0.0.1:5432/clusterra_okta_bench]

Prints per run: the read (requests, pages), the plan, the apply, and the whole run (run_reconciliation), and
a dry run's wall time.
"""

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--members", type=int, default=10_000)
parser.add_argument("--changes", type=int, default=100)
parser.add_argument("--runs", type=int, default=3)
parser.add_argument("--page-size", type=int, default=1000, help="members per page (Okta's `limit`, at most 1000)")
parser.add_argument("--latency-ms", type=float, default=0, help="added to each of the org's answers")
parser.add_argument("--database-url", default=os.environ.get("CLUSTERRA_DATABASE_URL",
                                                             "postgres://postgres@127.0.0.1:5432/clusterra_okta_bench"))
args = parser.parse_args()
GROUP, DOMAIN = "bench-okta-all", "okta-bench.test"


def email(i: int) -> str:
    return f"person{i:06d}@{DOMAIN}"


def serve(members: int, changes: int, latency: float, port_queue) -> None:
    """The org: everyone but the first changes/2 people, plus changes/2 people the portal does not have."""
    from tests.okta_server import FakeOkta
    okta = FakeOkta()
    okta.latency = latency
    half = changes // 2
    okta.add_group(GROUP, [okta.user(email(i)) for i in range(half, members + half)])
    okta.start()
    port_queue.put((okta.port, okta.token))
    while True:
        time.sleep(3600)


def create_database(url: str) -> None:
    import dj_database_url
    import psycopg
    from psycopg import sql
    cfg = dj_database_url.parse(url)
    params = {k: v for k, v in {"user": cfg["USER"], "password": cfg["PASSWORD"], "host": cfg["HOST"], "port": cfg["PORT"]}.items() if v}
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (cfg["NAME"],)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(cfg["NAME"])))


def main():
    ports = multiprocessing.Queue()
    org = multiprocessing.Process(target=serve, args=(args.members, args.changes, args.latency_ms / 1000, ports), daemon=True)
    org.start()
    port, token = ports.get(timeout=120)

    create_database(args.database_url)
    os.environ.update(CLUSTERRA_DATABASE_URL=args.database_url, DJANGO_SETTINGS_MODULE="clusterra.settings",
                      CLUSTERRA_DATA_DIR=os.environ.get("CLUSTERRA_DATA_DIR") or tempfile.mkdtemp(prefix="okta-bench-"),
                      CLUSTERRA_OKTA_PAGE_SIZE=str(args.page_size))
    import django
    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from accounts.models import AccessRule, Membership, Tenant, User
    from clusters.models import PosixIdentity
    from okta.client import OktaClient
    from okta.models import OktaConnection, SyncRun
    from okta.reconcile import plan_changes, read_groups, run_reconciliation

    settings.OKTA_PAGE_SIZE = args.page_size
    call_command("migrate", interactive=False, verbosity=0)
    tenant, _ = Tenant.objects.get_or_create(slug="okta-bench", defaults={"name": "Okta bench", "uid_range_start": 100000,
                                                                           "uid_range_end": 999999})
    AccessRule.objects.get_or_create(tenant=tenant, group=GROUP, defaults={"role": "member"})
    okta, _ = OktaConnection.objects.get_or_create(tenant=tenant, defaults={"org_url": "http://127.0.0.1"})
    okta.org_url, okta.dry_run, okta.max_removals = f"http://127.0.0.1:{port}", False, 0
    okta.set_api_token(token)
    okta.save()

    def reset() -> None:
        """The portal's side before a run: people 0..members-1 active members from the group, nobody else."""
        half = args.changes // 2
        wanted = [email(i) for i in range(args.members)]
        extra = User.objects.filter(email__endswith=f"@{DOMAIN}").exclude(email__in=wanted)
        PosixIdentity.objects.filter(tenant=tenant, user__in=extra).delete()
        Membership.objects.filter(tenant=tenant, user__in=extra).delete()
        extra.delete()
        have = set(User.objects.filter(email__endswith=f"@{DOMAIN}").values_list("email", flat=True))
        User.objects.bulk_create([User(email=e, password="!") for e in wanted if e not in have], batch_size=2000)
        users = dict(User.objects.filter(email__in=wanted).values_list("email", "pk"))
        members = set(Membership.objects.filter(tenant=tenant).values_list("user_id", flat=True))
        Membership.objects.bulk_create([Membership(tenant=tenant, user_id=pk, role="member", status="active", status_source="idp",
                                                   idp_groups=[GROUP]) for pk in users.values() if pk not in members], batch_size=2000)
        Membership.objects.filter(tenant=tenant, user__email__in=[email(i) for i in range(half)]).update(
            status="active", status_source="idp", idp_groups=[GROUP])
        SyncRun.objects.filter(connection=okta).delete()

    print(f"{args.members} members in one group, pages of {args.page_size}, {args.latency_ms:.0f} ms per answer; "
          f"{args.changes} changes per run ({args.changes // 2} adds, {args.changes // 2} removals)", flush=True)
    t = time.monotonic()
    reset()
    print(f"set-up: {time.monotonic() - t:.1f} s", flush=True)
    results = []
    for number in range(1, args.runs + 1):
        reset()
        connection.close()
        client = OktaClient(okta)
        t0 = time.monotonic()
        people, groups = read_groups(client, [GROUP])
        t_read = time.monotonic() - t0
        t1 = time.monotonic()
        plan = plan_changes(tenant, people, {GROUP})
        t_plan = time.monotonic() - t1
        t2 = time.monotonic()
        dry = run_reconciliation(okta, dry_run=True)
        t_dry = time.monotonic() - t2
        t3 = time.monotonic()
        run = run_reconciliation(okta, dry_run=False)
        t_run = time.monotonic() - t3
        assert run.status == "ok" and run.applied == args.changes == len(plan.changes), (run.status, run.error, run.applied)
        results.append({"read": t_read, "plan": t_plan, "dry": t_dry, "run": t_run})
        print(f"run {number}: read {len(people)} people in {client.stats.requests} requests {t_read:.2f} s, plan "
              f"{len(plan.changes)} changes {t_plan:.2f} s; dry run {t_dry:.2f} s; the run (read + plan + apply "
              f"{run.applied}) {t_run:.2f} s (apply ≈ {t_run - t_dry:.2f} s); {dry.planned} planned", flush=True)
    print(f"\n{args.runs} runs, load average {os.getloadavg()[0]:.1f}:")
    for key, label in (("read", "read the group"), ("plan", "plan"), ("dry", "dry run (read + plan)"), ("run", "run with apply")):
        values = [r[key] for r in results]
        print(f"  {label:<22} median {statistics.median(values):6.2f} s   max {max(values):6.2f} s")
    org.terminate()


if __name__ == "__main__":
    main()
