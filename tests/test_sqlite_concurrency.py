"""The embedded default (SQLite) under its own writers: two daphne processes and the job poller.

The rest of the suite runs on PostgreSQL; this test builds its own SQLite file the way `make demo` does
(`manage.py migrate` in a subprocess) and points every process at it.
"""

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import BASE_DIR, _ensure_posix_user, run_daphne, stop_process

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

JOBS = 24


def _sqlite_env(tmp_path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLUSTERRA_")}
    return {
        **env,
        "DJANGO_SETTINGS_MODULE": "clusterra.settings",
        "CLUSTERRA_DATA_DIR": str(tmp_path / "data"),
        "CLUSTERRA_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'clusterra.sqlite3'}",
        "CLUSTERRA_SECRET_KEY": "sqlite-concurrency-test-" + "k" * 40,
    }


def _call(base_url: str, method: str, path: str, token: str, body: dict | None = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{base_url}{path}", data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_two_web_processes_and_the_poller_share_the_sqlite_file(tmp_path, settings, posix_user, live_slurm):
    """Jobs submitted and cancelled through two daphne processes while the poller writes: every
    request answers 2xx and no process sees "database is locked" (issue 8 §7: a DELETE gave a 500)."""
    env = _sqlite_env(tmp_path)
    poll_user = _ensure_posix_user("clusterra-poll")
    run = dict(cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=300)
    migrate = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], **run)
    assert migrate.returncode == 0, migrate.stderr[-2000:]
    made = subprocess.run([sys.executable, "-m", "tests.sqlite_load", "setup", posix_user.pw_name, poll_user.pw_name], **run)
    assert made.returncode == 0, made.stderr[-2000:]
    ids = json.loads(made.stdout.strip().splitlines()[-1])
    cluster_id, token = ids["cluster_id"], ids["token"]

    stop_file = tmp_path / "stop-poller"
    poller_log = tmp_path / "poller.log"
    sqlite_url = {"CLUSTERRA_DATABASE_URL": env["CLUSTERRA_DATABASE_URL"]}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    answers: list[tuple[str, int, str]] = []
    lock = threading.Lock()
    with run_daphne(tmp_path / "a", settings, sqlite_url) as web_a, run_daphne(tmp_path / "b", settings, sqlite_url) as web_b:
        servers = [web_a, web_b]
        # The poller starts once both processes serve, so that their start-up does not compete with it for the CPU.
        with open(poller_log, "w") as log:
            poller = subprocess.Popen([sys.executable, "-m", "tests.sqlite_load", "poller", str(cluster_id), str(stop_file)],
                                      cwd=BASE_DIR, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            deadline = time.monotonic() + 60
            while not Path(f"{stop_file}.running").exists():
                assert poller.poll() is None and time.monotonic() < deadline, "the poller did not start"
                time.sleep(0.1)

            def call(i: int, method: str, path: str, body=None) -> tuple[int, str]:
                status, text = _call(servers[i % 2], method, path, token, body)
                with lock:
                    answers.append((f"{method} {path}", status, text[:300]))
                return status, text

            def submit(i: int) -> str | None:
                status, text = call(i, "POST", f"/v1/clusters/{cluster_id}/jobs",
                                    {"script": "#!/bin/bash\nsleep 600\n", "name": f"load-{i}", "time_limit": "5"})
                return json.loads(text)["job_id"] if status == 201 else None

            with ThreadPoolExecutor(4) as pool:
                job_ids = [j for j in pool.map(submit, range(JOBS)) if j]
                list(pool.map(lambda ij: call(ij[0], "DELETE", f"/v1/clusters/{cluster_id}/jobs/{ij[1]}"),
                              enumerate(job_ids)))
        finally:
            stop_file.touch()
            try:
                out, _ = poller.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                stop_process(poller)
                out = ""
            subprocess.run(["scancel", f"--user={posix_user.pw_name}"], timeout=30)
        logs = [server.log_path.read_text() for server in servers]

    summary = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"errors": ["poller printed nothing"]}
    failed = [a for a in answers if not 200 <= a[1] < 300]
    assert not failed, (f"{len(failed)} of {len(answers)} requests failed", failed[:3])
    assert len(answers) == 2 * JOBS
    for log in logs:
        assert "database is locked" not in log and "Traceback" not in log, log[-3000:]
    assert summary["errors"] == [], summary["errors"][:3]
    assert summary["polls"] >= 2 and summary["writes"] > summary["polls"], summary
    assert "database is locked" not in poller_log.read_text()
