"""Shared fixtures: a fixed cast per tenant and real POSIX users for real PTYs.

Cast (as in healthchecks' alice/bob/charlie): in tenant "acme" alice is admin, bob a member, and
revoked_rita has a revoked account; charlie belongs to tenant "other" only.
"""

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from accounts.models import Membership
from accounts.services import ensure_tenant, ensure_user, set_membership
from clusters.executors import LocalExecutor
from clusters.models import ClusterAccount
from clusters.services import configure_polling, ensure_cluster, map_account
from tests.oidc_provider import oidc_provider, oidc_provider_clean  # noqa: F401 (fixtures: a local OpenID Provider)

TEST_POSIX_USER = "clusterra-t1"
PASSWORD = "correct-horse-battery"


def _ensure_posix_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    if os.geteuid() != 0:
        pytest.fail(f"POSIX user {name} is missing and the tests are not running as root to create it")
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True, timeout=30)
    entry = pwd.getpwnam(name)
    os.chmod(entry.pw_dir, 0o700)
    return entry


@pytest.fixture(scope="session")
def posix_user() -> pwd.struct_passwd:
    """A regular POSIX user the terminal may open shells for (the current user when not root)."""
    if os.geteuid() == 0:
        return _ensure_posix_user(TEST_POSIX_USER)
    me = pwd.getpwuid(os.geteuid())
    if me.pw_uid < settings.TERMINAL_MIN_UID:
        pytest.fail("Run the tests as root or as a regular user (uid >= 1000)")
    return me


@pytest.fixture(autouse=True)
def _recordings_in_tmp(settings, tmp_path):
    settings.RECORDINGS_DIR = tmp_path / "recordings"
    settings.RECORDINGS_SPOOL_DIR = tmp_path / "spool"


@pytest.fixture(autouse=True)
def _own_cache_keys(settings):
    """Each test its own keys in the shared Redis cache (sign-in throttle counters: a test's failed sign-ins
    must not lock out the next test, or a parallel run); the daphne processes it starts use them too."""
    settings.CACHES = {"default": {**settings.CACHES["default"], "KEY_PREFIX": f"test-{uuid.uuid4().hex}"}}


@pytest.fixture
def cast(db, posix_user):
    acme = ensure_tenant(slug="acme", name="Acme Research")
    other = ensure_tenant(slug="other", name="Other Org")
    hpc = ensure_cluster(tenant=acme, slug="hpc", name="Acme HPC")
    other_hpc = ensure_cluster(tenant=other, slug="hpc", name="Other HPC")
    alice = ensure_user(email="alice@acme.test", password=PASSWORD)
    bob = ensure_user(email="bob@acme.test", password=PASSWORD)
    rita = ensure_user(email="rita@acme.test", password=PASSWORD)
    charlie = ensure_user(email="charlie@other.test", password=PASSWORD)
    set_membership(tenant=acme, user=alice, role=Membership.Role.ADMIN)
    set_membership(tenant=acme, user=bob, role=Membership.Role.MEMBER)
    set_membership(tenant=acme, user=rita, role=Membership.Role.MEMBER)
    set_membership(tenant=other, user=charlie, role=Membership.Role.ADMIN)
    for user in (alice, bob):
        map_account(cluster=hpc, user=user, posix_username=posix_user.pw_name, uid=posix_user.pw_uid)
    map_account(cluster=hpc, user=rita, posix_username=posix_user.pw_name, uid=posix_user.pw_uid, state="revoked")
    map_account(cluster=other_hpc, user=charlie, posix_username=posix_user.pw_name, uid=posix_user.pw_uid)

    class Cast:
        pass

    c = Cast()
    c.acme, c.other, c.hpc, c.other_hpc = acme, other, hpc, other_hpc
    c.alice, c.bob, c.rita, c.charlie = alice, bob, rita, charlie
    c.posix = posix_user
    return c


def pytest_sessionfinish(session, exitstatus):
    """In CI a skipped test is a failure: every service the tests need must be there."""
    if not os.environ.get("CI"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped and session.exitstatus == 0:
        reporter.write_line(f"CI: {skipped} test(s) were skipped; in CI that is a failure.", red=True)
        session.exitstatus = 1


@pytest.fixture(scope="session")
def live_slurm():
    assert shutil.which("sinfo"), "Slurm is not installed: make test runs scripts/slurm-local.sh up"
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=30)
    states = set(out.stdout.split())  # one line per node and partition
    assert out.returncode == 0 and states and states <= {"idle", "mixed", "allocated"}, (out.stdout, out.stderr)


@pytest.fixture
def slurm_cast(cast, live_slurm):
    """bob → the tests' POSIX user; alice → a second one; the poller runs as a third, unprivileged one."""
    other = _ensure_posix_user("clusterra-t2")
    poller = _ensure_posix_user("clusterra-poll")
    map_account(cluster=cast.hpc, user=cast.alice, posix_username=other.pw_name, uid=other.pw_uid)
    configure_polling(cast.hpc, posix_username=poller.pw_name, uid=poller.pw_uid)
    cast.bob_account = ClusterAccount.objects.get(cluster=cast.hpc, user=cast.bob)
    cast.alice_account = ClusterAccount.objects.get(cluster=cast.hpc, user=cast.alice)
    yield cast
    for account in (cast.bob_account, cast.alice_account):
        LocalExecutor().run(account, ["scancel", f"--user={account.posix_username}"], timeout=30)


BASE_DIR = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _database_url() -> str:
    """The URL of the test database pytest-django created, for the daphne subprocess."""
    s = connection.settings_dict
    if connection.vendor == "postgresql":
        return f"postgres://{s['USER']}@{s['HOST']}:{s['PORT']}/{s['NAME']}"
    return f"sqlite:///{s['NAME']}"


def wait_for(condition, timeout: float, what: str, interval: float = 0.05):
    """Poll `condition` until it returns something truthy (returned), or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(interval)


class LiveServer(str):
    """The base URL of a running daphne, with its process (tests that stop the server use it)."""

    def __new__(cls, url: str, proc: subprocess.Popen):
        obj = super().__new__(cls, url)
        obj.proc = proc
        return obj


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@contextlib.contextmanager
def run_daphne(tmp_path, settings, extra_env: dict[str, str] | None = None, launcher: list[str] | None = None):
    """A daphne serving the test database; its own URL is the token issuer (CLUSTERRA_ISSUER_URL).

    `launcher` replaces `python -m daphne` (it gets daphne's arguments), e.g. to start it the way a
    supervisor would."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "CLUSTERRA_DATABASE_URL": _database_url(),
        "CLUSTERRA_DATA_DIR": str(tmp_path / "data"),
        "CLUSTERRA_RECORDINGS_DIR": str(settings.RECORDINGS_DIR),
        "CLUSTERRA_RECORDINGS_SPOOL_DIR": str(settings.RECORDINGS_SPOOL_DIR),
        "CLUSTERRA_SECRET_KEY": settings.SECRET_KEY,
        "CLUSTERRA_ISSUER_URL": url,
        "CLUSTERRA_CACHE_KEY_PREFIX": settings.CACHES["default"].get("KEY_PREFIX", ""),
        **(extra_env or {}),
    }
    log_path = tmp_path / "daphne.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [*(launcher or [sys.executable, "-m", "daphne"]), "-b", "127.0.0.1", "-p", str(port), "clusterra.asgi:application"],
            cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60  # importing Django and the apps takes over 20 s on two busy cores
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"daphne did not start: {log_path.read_text()}")
                time.sleep(0.1)
        server = LiveServer(url, proc)
        server.log_path = log_path
        yield server
    finally:
        stop_process(proc)


@pytest.fixture
def live_daphne(transactional_db, tmp_path, settings):
    with run_daphne(tmp_path, settings) as server:
        yield server


# Fixtures for tests with several portal processes (at the end: that module imports the helpers above).
from tests.multiprocess import private_redis, redis_layer  # noqa: E402, F401
