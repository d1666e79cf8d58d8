"""Child-process side of tests/test_sqlite_concurrency.py: runs with the settings of its environment
(an embedded-default SQLite file), never under pytest-django.

    python -m tests.sqlite_load setup POSIX_USER POLL_USER   -> prints {"cluster_id": ..., "token": ...}
    python -m tests.sqlite_load poller CLUSTER_ID STOP_FILE  -> polls until STOP_FILE exists, prints a summary
"""

import json
import os
import pwd
import sys
import time
import traceback


def setup(posix_user: str, poll_user: str) -> None:
    from accounts.models import Membership
    from accounts.services import create_api_token, ensure_tenant, ensure_user, set_membership
    from clusters.services import configure_polling, ensure_cluster, map_account

    tenant = ensure_tenant(slug="acme", name="Acme Research")
    cluster = ensure_cluster(tenant=tenant, slug="hpc", name="Acme HPC")
    user = ensure_user(email="bob@acme.test", password="correct-horse-battery")
    set_membership(tenant=tenant, user=user, role=Membership.Role.MEMBER)
    entry, poller = pwd.getpwnam(posix_user), pwd.getpwnam(poll_user)
    map_account(cluster=cluster, user=user, posix_username=entry.pw_name, uid=entry.pw_uid)
    configure_polling(cluster, posix_username=poller.pw_name, uid=poller.pw_uid)
    _token, text = create_api_token(user=user, tenant=tenant, name="load")
    print(json.dumps({"cluster_id": cluster.pk, "token": text}))


def poller(cluster_id: int, stop_file: str) -> None:
    """The job poller at its worst: the real poll back to back, and between polls the kind of
    read-then-write transaction the poll's own bookkeeping does, for ~0.1 s."""
    from django.db import transaction
    from django.utils import timezone

    from clusters.models import Cluster
    from jobs.models import Job
    from jobs.services import refresh_jobs, refresh_partitions

    cluster = Cluster.objects.get(pk=cluster_id)
    polls = writes = 0
    errors: list[str] = []
    while not os.path.exists(stop_file):
        try:
            refresh_jobs(cluster)
            refresh_partitions(cluster)
            polls += 1
            if polls == 1:
                open(f"{stop_file}.running", "w").close()  # the test starts its requests now
            until = time.monotonic() + 0.1
            while time.monotonic() < until:
                with transaction.atomic():
                    ids = list(Job.objects.filter(cluster=cluster, in_queue=True).values_list("pk", flat=True))
                    Job.objects.filter(pk__in=ids).update(last_seen_at=timezone.now())
                writes += 1
        except Exception:
            errors.append(traceback.format_exc(limit=3))
    print(json.dumps({"polls": polls, "writes": writes, "errors": errors}))


if __name__ == "__main__":
    import django

    django.setup()
    command, *args = sys.argv[1:]
    if command == "setup":
        setup(*args)
    elif command == "poller":
        poller(int(args[0]), args[1])
    else:
        raise SystemExit(f"unknown command {command!r}")
