"""The `clusterra` console script, as installed, against a live daphne and the live Slurm."""

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.db import connection

from accounts.services import create_api_token
from clusters.executors import LocalExecutor
from jobs.services import refresh_jobs

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

CLI = str(Path(sys.executable).parent / "clusterra")


@pytest.fixture
def poller(slurm_cast):
    """What the Celery poller does in production, here a thread: refresh the job cache twice a second."""
    stop = threading.Event()

    def loop():
        try:
            while not stop.wait(0.5):
                refresh_jobs(slurm_cast.hpc)
        finally:
            connection.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=10)


@pytest.fixture
def cli(slurm_cast, live_daphne, poller, tmp_path):
    _, token = create_api_token(user=slurm_cast.bob, tenant=slurm_cast.acme, name="cli test")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CLUSTERRA_CONFIG": str(tmp_path / "config.json")}

    def run(*args, stdin: str | None = None, ok: bool = True):
        result = subprocess.run([CLI, *args], input=stdin, capture_output=True, text=True, env=env, timeout=60)
        if ok:
            assert result.returncode == 0, result.stderr
        return result

    login = run("login", "--url", live_daphne, "--token-stdin", stdin=token + "\n")
    assert "1 cluster(s) visible" in login.stdout
    assert (tmp_path / "config.json").stat().st_mode & 0o077 == 0
    return run


def test_cli_round_trip(cli, slurm_cast):
    c = slurm_cast
    assert json.loads(cli("--json", "clusters").stdout)[0]["slug"] == "hpc"
    script = f"{c.posix.pw_dir}/cli-job.sh"
    assert LocalExecutor().run(c.bob_account, ["sh", "-c", 'printf "#!/bin/bash\\necho line1\\nsleep 2\\necho line2\\n" > "$1"', "sh", script]).ok
    submitted = cli("job", "submit", "--script-path", script, "--name", "from cli", "--partition", "batch")
    job_id = submitted.stdout.split()[2]
    assert submitted.stdout.startswith(f"Submitted job {job_id} to hpc")
    followed = cli("job", "output", job_id, "--follow", "--interval", "0.5")  # returns once the job has finished
    assert followed.stdout == "line1\nline2\n"
    shown = json.loads(cli("--json", "job", "show", job_id).stdout)
    assert shown["name"] == "from cli" and shown["partition"] == "batch"
    # For people: the exit code once the poller has it from accounting (the job is still listed by squeue
    # for MinJobAge, so "queued" is read from its state), the time limit as Slurm writes it.
    deadline = time.monotonic() + 30
    while "Exit code: 0\n" not in (human := cli("job", "show", job_id).stdout):
        assert time.monotonic() < deadline, human
        time.sleep(0.5)
    assert "Queued: no, it has finished" in human and "State: COMPLETED" in human
    assert re.search(r"Time limit: (UNLIMITED|[0-9:-]+)\n", human) and "Output: " + c.posix.pw_dir in human
    table = cli("job", "list", "--name", "from cli").stdout.splitlines()
    assert table[0].split()[:3] == ["JOBID", "NAME", "USER"] and table[1].split()[0] == job_id  # newest first


def test_cli_errors_exit_non_zero_with_the_servers_message(cli, slurm_cast):
    bad = cli("job", "submit", "--script-path", "/etc/passwd", ok=False)
    assert bad.returncode == 1 and "must be inside" in bad.stderr and "HTTP 400" in bad.stderr
    missing = cli("job", "show", "424242", ok=False)
    assert missing.returncode == 1 and "No such job" in missing.stderr
    sleeper = cli("job", "submit", "--script-path", f"{slurm_cast.posix.pw_dir}/cli-none.sh", ok=False)
    assert sleeper.returncode == 1 and "cli-none.sh" in sleeper.stderr


def test_cli_cancel(cli, slurm_cast):
    c = slurm_cast
    script = f"{c.posix.pw_dir}/cli-sleep.sh"
    assert LocalExecutor().run(c.bob_account, ["sh", "-c", 'printf "#!/bin/bash\\nsleep 120\\n" > "$1"', "sh", script]).ok
    job_id = cli("job", "submit", "--script-path", script, "--time", "5").stdout.split()[2]
    cancelled = cli("job", "cancel", job_id)
    assert cancelled.stdout.startswith(f"Cancelled job {job_id}")
