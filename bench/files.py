#!/usr/bin/env python3
"""File browser benchmark: listing a 100-file directory as the user, locally and through the SSM executor.

    .venv/bin/python bench/files.py [--files 100] [--requests 50]

Needs root (it creates the POSIX user `clusterra-bench` and runs every listing as that user with
runuser; otherwise the listings run as you). It makes a directory of --files files (sizes 0 B to
1 MB, a few subdirectories and symbolic links) in the user's home, then times, for each backend:

- `action`: filebrowser.actions.browse() — validation, the head-node command (realpath + find -printf
  as the user), parsing and the root check;
- `page`: GET /t/<tenant>/c/<cluster>/files/?path=… through Django's test client (the above plus
  the session, the account lookup and the template), signed in.

`local` is the local executor (runuser on this machine). `ssm` is the SSM executor against the
SendCommand stand-in of tests/test_provisioning.py (botocore's request, serialised for the wire, is
answered in-process; the script SendCommand carries runs here as root with `sh`, then runuser), with
the executor's own GetCommandInvocation schedule (first poll after 0.1 s, then doubling): that poll
delay, not the command, is most of an SSM listing; `--ssm-first-delay` changes it to see the rest.
The database is a fresh SQLite file (the embedded default) unless CLUSTERRA_DATABASE_URL is set.
"""

import argparse
import logging
import os
import pwd
import shutil
import sys
import tempfile
import time
from pathlib import Path

BASE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE))
DATA = tempfile.mkdtemp(prefix="clusterra-files-bench-")
os.environ.setdefault("CLUSTERRA_DATA_DIR", DATA)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clusterra.settings")

import django  # noqa: E402

django.setup()

import botocore.session  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

from accounts.services import ensure_tenant, ensure_user, set_membership  # noqa: E402
from bench import common  # noqa: E402
from clusters import aws, executors  # noqa: E402
from clusters.models import ClusterAccount  # noqa: E402
from clusters.services import ensure_cluster, map_account  # noqa: E402
from filebrowser import actions  # noqa: E402
from tests.test_provisioning import INSTANCE, REGION, ROLE, RunCommandPeer  # noqa: E402

USER = "clusterra-bench"


def posix_user():
    return pwd.getpwuid(os.geteuid()) if os.geteuid() != 0 else common.posix_user(USER)


def make_directory(entry, count: int) -> Path:
    """`count` entries: mostly files of 0 B to 1 MB, every 20th a directory, every 25th a symbolic link."""
    directory = Path(entry.pw_dir) / f"bench-files-{count}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    for i in range(count):
        path = directory / f"result-{i:04d}.{'csv' if i % 3 else 'log'}"
        if i % 20 == 0:
            path = directory / f"run-{i:04d}"
            path.mkdir()
        elif i % 25 == 1:
            os.symlink(f"result-{i - 1:04d}.log", path)
        else:
            path.write_bytes(b"x" * ((i * 10_007) % 1_000_000))
        os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    os.chown(directory, entry.pw_uid, entry.pw_gid)
    return directory




def timed(fn, n: int, warmup: int = 3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return common.percentiles(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--ssm-first-delay", type=float, default=None,
                        help="seconds before the SSM executor's first GetCommandInvocation (default: its own, 0.1)")
    args = parser.parse_args()

    call_command("migrate", verbosity=0)
    logging.getLogger("clusters.executors").setLevel(logging.WARNING)  # one line per SSM command otherwise
    setup_test_environment()  # the test client's host name is allowed
    entry = posix_user()
    directory = make_directory(entry, args.files)
    tenant = ensure_tenant(slug="bench", name="Bench")
    person = ensure_user(email="files-bench@bench.test", password="bench-password-123")
    set_membership(tenant=tenant, user=person, role="member")
    local = ensure_cluster(tenant=tenant, slug="local", name="Local")
    ssm = ensure_cluster(tenant=tenant, slug="ssm", name="SSM")
    ssm.backend, ssm.backend_settings = "ssm", {"region": REGION, "instance_id": INSTANCE, "role_arn": ROLE}
    ssm.save()
    for cluster in (local, ssm):
        map_account(cluster=cluster, user=person, posix_username=entry.pw_name, uid=entry.pw_uid)

    # The SendCommand stand-in answers the SSM executor's botocore client.
    client = botocore.session.get_session().create_client(
        "ssm", region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")  # noqa: S106
    workdir = Path(tempfile.mkdtemp(prefix="clusterra-files-bench-ssm-"))
    RunCommandPeer(client, INSTANCE, workdir)
    aws.account_client = lambda account, service, **kw: client
    if args.ssm_first_delay is not None:
        original = executors.SsmExecutor.__init__
        executors.SsmExecutor.__init__ = lambda self, cluster, **kw: original(self, cluster, **{**kw, "first_delay": args.ssm_first_delay})

    browser = Client()
    browser.force_login(person)
    load = os.getloadavg()[0]
    print(f"{args.files} entries in {directory}, as {entry.pw_name}; {args.requests} requests each; load average {load:.1f}")
    print(f"{'backend':8} {'what':7} {'p50 ms':>8} {'p95 ms':>8}")
    try:
        for cluster in (local, ssm):
            account = ClusterAccount.objects.select_related("cluster__tenant").get(cluster=cluster, user=person)
            listing = actions.browse(account, str(directory))
            assert len(listing.entries) == args.files and not listing.truncated, len(listing.entries)
            url = f"/t/bench/c/{cluster.slug}/files/"

            def page(url=url):
                response = browser.get(url, {"path": str(directory)})
                assert response.status_code == 200, response.content[:500]

            for what, fn in (("action", lambda account=account: actions.browse(account, str(directory))), ("page", page)):
                p50, p95 = timed(fn, args.requests)
                print(f"{cluster.slug:8} {what:7} {p50:8.1f} {p95:8.1f}", flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(DATA, ignore_errors=True)


if __name__ == "__main__":
    main()
