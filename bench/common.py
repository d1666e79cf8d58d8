"""What the page benchmarks share: a daphne on a free port, a signed-in session cookie, timed GETs.

Import after django.setup() (the session store needs the settings).
"""

import contextlib
import os
import pwd
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BASE = Path(__file__).resolve().parent.parent


def posix_user(name):
    """The POSIX user `name`, created (with a home directory) if this machine does not have it; needs root then."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True, timeout=30)
        return pwd.getpwnam(name)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(samples):
    samples = sorted(samples)
    return statistics.median(samples), samples[int(0.95 * (len(samples) - 1))]


def timed_get(url, headers, n):
    """(p50, p95) in ms of `n` GETs of `url`, each of which must answer 200."""
    times = []
    for _ in range(n):
        request = urllib.request.Request(url, headers=headers)
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            assert response.status == 200
        times.append((time.perf_counter() - start) * 1000)
    return percentiles(times)


def fetch(url, headers) -> str:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
        return response.read().decode()


def session_cookie(user) -> dict:
    """A Cookie header of a web session signed in as `user` (as the password sign-in makes it)."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    session = SessionStore()
    session.update({SESSION_KEY: str(user.pk), BACKEND_SESSION_KEY: "accounts.backends.PasswordBackend",
                    HASH_SESSION_KEY: user.get_session_auth_hash()})
    session.create()
    return {"Cookie": f"sessionid={session.session_key}"}


@contextlib.contextmanager
def running_daphne(data_dir):
    """daphne serving this environment's database on a free port; yields its port, stops it at the end."""
    port = free_port()
    log_path = Path(data_dir) / "daphne.log"
    with open(log_path, "w") as log:
        daphne = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "clusterra.asgi:application"],
                                  cwd=BASE, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if daphne.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"daphne did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.2)
        yield port
    finally:
        daphne.terminate()
        try:
            daphne.wait(timeout=20)
        except subprocess.TimeoutExpired:  # a busy machine: do not lose the results for it
            daphne.kill()
            daphne.wait(timeout=20)
