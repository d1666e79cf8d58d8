"""The production topology on one machine (scripts/prod-local.sh): nginx in front of two daphne processes,
PostgreSQL, the Redis channel layer, Celery worker and beat, all real, reached only through nginx.

The instance has its own state directory, port, PostgreSQL database and Redis database index, so it does
not touch the pytest-django database or other runs; rows are read from its database with psycopg.
"""

import asyncio
import contextlib
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import psycopg
import pytest
import redis
import requests
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from terminal import protocol
from terminal.backends.local_pty import session_pids
from tests.conftest import BASE_DIR, _free_port
from tests.terminal_client import WsTerminal

# The browser tests' Chromium, sign-in step and cuttable proxy.
from tests.test_browser import (
    CuttableProxy,
    _wait_for_line,
    chromium_page,
    open_terminal_as_bob,
)

pytestmark = [pytest.mark.slow]

SCRIPT = BASE_DIR / "scripts" / "prod-local.sh"
PG = "postgres://postgres@127.0.0.1:5432"
TERMINAL_PATH = "/t/demo/c/local/terminal/"
WS_PATH = "/ws/t/demo/c/local/terminal/"


def _free_redis_index() -> int:
    """A Redis database index nobody uses now (the channel layer, the broker and the poll locks go there)."""
    indexes = list(range(5, 16))
    random.shuffle(indexes)
    for index in indexes:
        client = redis.Redis(host="127.0.0.1", port=6379, db=index, socket_timeout=5)
        try:
            if client.dbsize() == 0:
                return index
        finally:
            client.close()
    pytest.fail("no empty Redis database index among 5-15")


class Prod:
    def __init__(self, url: str, state: Path, db_name: str, password: str, env: dict):
        self.url, self.state, self.db_name, self.password, self.env = url, state, db_name, password, env
        self.ws_url = url.replace("http://", "ws://")

    def rows(self, query: str, *params) -> list[tuple]:
        with psycopg.connect(f"{PG}/{self.db_name}", connect_timeout=10) as conn:
            return conn.execute(query, params).fetchall()

    def rows_when(self, done, query: str, *params, timeout: float = 15) -> list[tuple]:
        """The rows of `query` once `done(rows)` holds (rows are finished just after the exit status is sent)."""
        deadline = time.monotonic() + timeout
        while not done(rows := self.rows(query, *params)):
            assert time.monotonic() < deadline, f"still {rows} after {timeout} s"
            time.sleep(0.1)
        return rows

    def run(self, action: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(SCRIPT), action], check=False, env=self.env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def prod(request):
    state = Path(tempfile.mkdtemp(prefix="ctopo-", dir="/tmp"))  # short: unix socket paths are limited
    port = _free_port()
    db_name = f"clusterra_topo_{secrets.token_hex(4)}"
    redis_index = _free_redis_index()
    password = secrets.token_urlsafe(12)
    env = {
        **os.environ,
        "CLUSTERRA_PROD_DIR": str(state),
        "CLUSTERRA_PROD_PORT": str(port),
        "CLUSTERRA_DATA_DIR": str(state / "data"),
        "CLUSTERRA_DATABASE_URL": f"{PG}/{db_name}",
        "CLUSTERRA_REDIS_URL": f"redis://127.0.0.1:6379/{redis_index}",
        "CLUSTERRA_DEMO_PASSWORD": password,
    }
    env.pop("CLUSTERRA_CELERY_BROKER_URL", None)  # the broker follows the channel layer's isolated index
    instance = Prod(f"http://127.0.0.1:{port}", state, db_name, password, env)
    failed_before = request.session.testsfailed
    try:
        up = instance.run("up")
        assert up.returncode == 0, f"prod-local.sh up failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}"
        assert f"running on http://127.0.0.1:{port}/" in up.stdout
        yield instance
    finally:
        down = instance.run("down", timeout=180)
        with psycopg.connect(f"{PG}/postgres", autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        client = redis.Redis(host="127.0.0.1", port=6379, db=redis_index, socket_timeout=5)
        client.flushdb()
        client.close()
    assert down.returncode == 0, down.stderr
    status = instance.run("status", timeout=60)
    assert status.returncode == 3 and "running" not in status.stdout, status.stdout
    assert not list((state / "run").glob("daphne-*.sock")), "down left sockets behind"
    if request.session.testsfailed == failed_before:
        shutil.rmtree(state)  # kept after a failure: its log/ has every process's output


def demo_posix_user(email: str) -> str:
    """setup_demo maps bob to POSIX bob when run as root, else to the user running it."""
    return email.split("@")[0] if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name


def sign_in(prod: Prod, email: str = "bob@demo.test") -> requests.Session:
    """The login form through nginx, as a browser posts it (CSRF cookie + token, Origin and Referer)."""
    http = requests.Session()
    login = http.get(f"{prod.url}/accounts/login/", timeout=20)
    assert login.status_code == 200
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text).group(1)
    answer = http.post(
        f"{prod.url}/accounts/login/", data={"csrfmiddlewaretoken": token, "username": email, "password": prod.password},
        headers={"Origin": prod.url, "Referer": f"{prod.url}/accounts/login/"}, allow_redirects=False, timeout=20,
    )
    assert answer.status_code == 302, (answer.status_code, answer.text[:500])
    assert "sessionid" in http.cookies
    return http


def ws_path(worker: str | None = None, **query) -> str:
    path = WS_PATH if worker is None else WS_PATH.replace("/ws/", f"/ws/w/{worker}/", 1)
    return f"{path}?{urlencode({'cols': 80, 'rows': 24, **query})}"


def open_socket(prod: Prod, http: requests.Session, path: str, **headers):
    return ws_connect(
        prod.ws_url + path, origin=prod.url, open_timeout=20, ping_interval=None, max_size=None,
        additional_headers={"Cookie": f"sessionid={http.cookies['sessionid']}", **headers},
    )


async def shell_pid(term: WsTerminal) -> int:
    mark = secrets.token_hex(3)
    await term.ws.send(protocol.encode_input(f"echo {mark}=$$\r".encode()))
    pattern = re.compile(rf"{mark}=(\d+)\r\n".encode())  # the echoed command line has `$$`, not digits
    await term.pump_until(lambda: pattern.search(term.output), 20, f"the shell's pid ({mark})")
    return int(pattern.search(term.output).group(1))


def test_sign_in_through_nginx_checks_csrf_against_the_public_origin(prod):
    http = sign_in(prod)
    page = http.get(f"{prod.url}{TERMINAL_PATH}", timeout=20)
    assert page.status_code == 200 and f'data-ws-path="{WS_PATH}"' in page.text

    # The same form from another origin is refused: CSRF is in force behind the proxy, not switched off.
    other = requests.Session()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', other.get(f"{prod.url}/accounts/login/", timeout=20).text)
    refused = other.post(
        f"{prod.url}/accounts/login/",
        data={"csrfmiddlewaretoken": token.group(1), "username": "bob@demo.test", "password": prod.password},
        headers={"Origin": "http://evil.example"}, allow_redirects=False, timeout=20,
    )
    assert refused.status_code == 403 and "sessionid" not in other.cookies


def test_the_request_id_is_nginxs_and_a_client_cannot_choose_it(prod):
    answer = requests.get(f"{prod.url}/accounts/login/", headers={"X-Request-ID": "chosen-by-the-client"}, timeout=20)
    request_id = answer.headers["X-Request-ID"]  # echoed by the portal (CLUSTERRA_TRUST_REQUEST_ID)
    assert re.fullmatch(r"[0-9a-f]{32}", request_id), request_id
    log = prod.state / "log" / "nginx-access.log"
    deadline = time.monotonic() + 10
    while f"request_id={request_id} " not in log.read_text():  # nginx writes the line when the request is done
        assert time.monotonic() < deadline, "nginx's access log lacks the id the portal answered with"
        time.sleep(0.1)


def test_static_files_and_the_terminal_page_come_through_nginx(prod):
    for path, source in [
        ("/static/terminal/terminal.js", BASE_DIR / "static" / "terminal" / "terminal.js"),
        ("/static/vendor/xterm/xterm.mjs", BASE_DIR / "node_modules" / "@xterm" / "xterm" / "lib" / "xterm.mjs"),
    ]:
        answer = requests.get(f"{prod.url}{path}", timeout=20)
        assert answer.status_code == 200 and answer.content == source.read_bytes(), path
        # Browsers run ES modules (the page, xterm.js) only when they come as JavaScript.
        assert answer.headers["Content-Type"].split(";")[0] in ("application/javascript", "text/javascript"), answer.headers
        # nginx's own headers (the `location /static/` block), not the application's.
        assert answer.headers["Cache-Control"] == "max-age=3600" and answer.headers["Server"] == "nginx", answer.headers
    assert (prod.state / "static" / "terminal" / "terminal.js").exists()  # collectstatic's output is what is served
    page = sign_in(prod).get(f"{prod.url}{TERMINAL_PATH}", timeout=20).text
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"|"(/static/[^"]+\.mjs)"', page)  # tags and the import map
    assert len(assets) >= 6, page
    for asset in (a or b for a, b in assets):
        answer = requests.get(f"{prod.url}{asset}", timeout=20)
        assert answer.status_code == 200, asset
        if asset.endswith((".js", ".mjs")):
            assert "javascript" in answer.headers["Content-Type"], (asset, answer.headers["Content-Type"])


def test_a_terminal_through_nginx_runs_as_the_demo_user(prod):
    http = sign_in(prod)

    async def session():
        # A client-supplied X-Forwarded-For must not become the recorded address: nginx overwrites it.
        async with open_socket(prod, http, ws_path(), **{"X-Forwarded-For": "203.0.113.9"}) as ws:
            term = WsTerminal(ws)
            connected = await term.status("connected")
            await ws.send(protocol.encode_input(b"echo user=$(whoami)\r"))
            await term.output_has(f"user={demo_posix_user('bob@demo.test')}\r\n".encode())
            await ws.send(protocol.encode_input(b"exit\r"))
            return connected, await term.status("exit")

    connected, ended = asyncio.run(session())
    assert connected["worker"] in ("1", "2") and connected["backend"] == "local"
    assert ended["reason"] == "closed"
    [(address, reason)] = prod.rows_when(
        lambda rows: rows[0][1], "SELECT client_address, end_reason FROM terminal_terminalsession WHERE id = %s",
        connected["session_id"])
    assert (str(address), reason) == ("127.0.0.1", "closed")


def test_both_daphne_processes_serve_terminals(prod):
    http = sign_in(prod)
    seen: dict[str, int] = {}

    async def one() -> str:
        async with open_socket(prod, http, ws_path()) as ws:
            term = WsTerminal(ws)
            connected = await term.status("connected")
            pid = await shell_pid(term)
            await ws.send(protocol.encode_terminate())
            await term.status("exit")
            seen.setdefault(connected["worker"], pid)
            return connected["worker"]

    for _ in range(12):
        asyncio.run(one())
        if set(seen) == {"1", "2"}:
            break
    assert set(seen) == {"1", "2"}, f"only worker(s) {sorted(seen)} served terminals"
    # Each process runs its own shells.
    assert seen["1"] != seen["2"]


def test_a_reattach_through_the_worker_prefix_reaches_the_same_shell_and_only_there(prod):
    http = sign_in(prod)

    async def scenario():
        async with open_socket(prod, http, ws_path()) as ws:
            term = WsTerminal(ws)
            connected = await term.status("connected")
            first_pid = await shell_pid(term)
        # The socket is gone (a reload, a dropped network): the session waits for a reattach.
        session_id, worker = connected["session_id"], connected["worker"]
        other = "2" if worker == "1" else "1"

        # Sent to the other process, the reattach finds nothing there: refused as ended, the session untouched.
        async with open_socket(prod, http, ws_path(other, attach=session_id)) as ws:
            term = WsTerminal(ws)
            refused = await term.status("exit")
            with pytest.raises(ConnectionClosed):
                await term.status("never")
            refused_code = ws.close_code

        # From a fresh connection through /ws/w/<worker>/: the same shell.
        async with open_socket(prod, http, ws_path(worker, attach=session_id)) as ws:
            term = WsTerminal(ws)
            again = await term.status("connected")
            second_pid = await shell_pid(term)
            await ws.send(protocol.encode_input(b"exit\r"))
            ended = await term.status("exit")

        # A worker id no process has: nginx answers 502 at once (no resolver is consulted).
        with pytest.raises(InvalidStatus) as bad:
            async with open_socket(prod, http, ws_path("zz9", attach=session_id)):
                pass
        return connected, refused, refused_code, first_pid, again, second_pid, ended, bad.value.response.status_code

    connected, refused, refused_code, first_pid, again, second_pid, ended, bad_status = asyncio.run(scenario())
    assert refused["reason"] == "refused" and refused["message"] == "That terminal session has ended."
    assert refused_code == protocol.CLOSE_NOT_FOUND
    assert again["reattached"] is True and again["session_id"] == connected["session_id"]
    assert again["worker"] == connected["worker"]
    assert second_pid == first_pid
    assert ended["reason"] == "closed"
    assert bad_status == 502
    [(reason,)] = prod.rows_when(lambda rows: rows[0][0], "SELECT end_reason FROM terminal_terminalsession WHERE id = %s",
                                 connected["session_id"])
    assert reason == "closed"


def test_idle_terminals_on_both_processes_outlive_the_redis_read_timeout_and_are_revoked(prod):
    """The Redis channel layer used to drop a quiet terminal after 5 s (redis-py 8's default socket
    timeout cut channels_redis's 5 s BZPOPMIN wait): idle sessions on both processes stay up well past it,
    and a tenant admin's Terminate through nginx still ends each within seconds."""
    bob, alice = sign_in(prod), sign_in(prod, "alice@demo.test")

    async def scenario():
        sockets, terms, by_worker = [], [], {}
        try:
            while set(by_worker) != {"1", "2"}:  # least_conn: an open session steers the next one elsewhere
                assert len(sockets) < 6, f"sessions only on worker(s) {sorted(by_worker)}"
                ws = await open_socket(prod, bob, ws_path())
                sockets.append(ws)
                term = WsTerminal(ws)
                terms.append(term)
                connected = await term.status("connected")
                by_worker.setdefault(connected["worker"], []).append((term, connected["session_id"]))
            loop = asyncio.get_running_loop()
            idle_until = loop.time() + 12  # idle: no input, no output, more than twice the old 5 s limit
            for term in terms:
                with pytest.raises(asyncio.TimeoutError):
                    await term.pump_until(lambda: False, max(0.01, idle_until - loop.time()), "nothing")
            for n, term in enumerate(terms):
                await term.ws.send(protocol.encode_input(f"echo alive-$((1000+{n}))\r".encode()))
                await term.output_has(f"alive-{1000 + n}".encode())

            # alice ends every session from the tenant's live-sessions page, through nginx.
            page = await asyncio.to_thread(alice.get, f"{prod.url}/t/demo/sessions/", timeout=20)
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
            started = loop.time()
            for sessions in by_worker.values():
                for _term, session_id in sessions:
                    answer = await asyncio.to_thread(
                        alice.post, f"{prod.url}/t/demo/sessions/{session_id}/terminate/",
                        data={"csrfmiddlewaretoken": token}, headers={"Origin": prod.url},
                        allow_redirects=False, timeout=20)
                    assert answer.status_code == 302, answer.status_code
            ends = [await term.status("exit", timeout=15) for term in terms]
            return by_worker, ends, loop.time() - started
        finally:
            for ws in sockets:
                await ws.close()

    by_worker, ends, seconds = asyncio.run(scenario())
    assert {end["reason"] for end in ends} == {"revoked"}, ends
    ids = [sid for sessions in by_worker.values() for _t, sid in sessions]
    rows = prod.rows_when(lambda rows: all(r for (r,) in rows),
                          "SELECT end_reason FROM terminal_terminalsession WHERE id = ANY(%s::uuid[])", ids)
    assert sorted(r for (r,) in rows) == ["revoked"] * len(ids)
    assert seconds < 15


def test_status_lists_every_process_and_up_is_idempotent(prod):
    status = prod.run("status", timeout=60)
    assert status.returncode == 0, status.stdout
    for name in ("nginx", "daphne-1", "daphne-2", "celery-worker", "celery-beat"):
        assert re.search(rf"^{name}\s+running\s+pid \d+$", status.stdout, re.MULTILINE), status.stdout
    pids_before = {p.name: p.read_text() for p in (prod.state / "pids").iterdir()}
    again = prod.run("up")
    assert again.returncode == 0, again.stderr[-2000:]
    assert {p.name: p.read_text() for p in (prod.state / "pids").iterdir()} == pids_before  # nothing restarted


def test_a_killed_worker_gets_no_reattach_until_it_is_back_and_then_refuses_it_as_ended(prod):
    """The documented failure mode: the owner of a session dies. Its reattach path answers 502 while it is
    down (never another process), new sessions go to the survivor, `up` restarts it, and the new process
    refuses the reattach as ended."""
    http = sign_in(prod)

    async def open_and_leave():
        async with open_socket(prod, http, ws_path()) as ws:
            term = WsTerminal(ws)
            connected = await term.status("connected")
            return connected, await shell_pid(term)

    connected, pid = asyncio.run(open_and_leave())
    worker, other = connected["worker"], "2" if connected["worker"] == "1" else "1"
    leader = _leader_of(pid)
    pid_file = prod.state / "pids" / f"daphne-{worker}.pid"
    daphne_pid = int(pid_file.read_text().split()[0])
    os.kill(daphne_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{daphne_pid}").exists() and Path(f"/proc/{daphne_pid}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        async def while_down():
            with pytest.raises(InvalidStatus) as down:
                async with open_socket(prod, http, ws_path(worker, attach=connected["session_id"])):
                    pass
            async with open_socket(prod, http, ws_path()) as ws:  # nginx skips the dead process
                term = WsTerminal(ws)
                fresh = await term.status("connected")
                await ws.send(protocol.encode_terminate())
                await term.status("exit")
            return down.value.response.status_code, fresh

        status_code, fresh = asyncio.run(while_down())
        assert status_code == 502 and fresh["worker"] == other
        listing = prod.run("status", timeout=60)
        assert listing.returncode == 3 and re.search(rf"^daphne-{worker}\s+dead", listing.stdout, re.MULTILINE), listing.stdout

        pids_before = {p.name: p.read_text() for p in (prod.state / "pids").iterdir()}
        restarted = prod.run("up")
        assert restarted.returncode == 0, restarted.stderr[-2000:]
        pids_after = {p.name: p.read_text() for p in (prod.state / "pids").iterdir()}
        assert [name for name in pids_after if pids_after[name] != pids_before[name]] == [pid_file.name]

        async def after_restart():
            async with open_socket(prod, http, ws_path(worker, attach=connected["session_id"])) as ws:
                term = WsTerminal(ws)
                refused = await term.status("exit")
                with pytest.raises(ConnectionClosed):
                    await term.status("never")
                return refused, ws.close_code

        refused, code = asyncio.run(after_restart())
        assert refused["message"] == "That terminal session has ended." and code == protocol.CLOSE_NOT_FOUND
    finally:
        for orphan in session_pids(leader):  # ending a dead process's shells is issue 8 §4's reaper's job
            with contextlib.suppress(ProcessLookupError):
                os.kill(orphan, signal.SIGKILL)


def test_the_tls_site_for_four_workers_passes_nginx_t(tmp_path):
    """The site an operator installs (TLS, N workers) is valid nginx, and bad values never reach it."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "portal.example.org")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "fullchain.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "privkey.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    render = [str(BASE_DIR / "deploy" / "nginx-site.sh"), "--workers", "4", "--server-name", "portal.example.org",
              "--tls-cert", str(tmp_path / "fullchain.pem"), "--tls-key", str(tmp_path / "privkey.pem"),
              "--access-log", str(tmp_path / "access.log")]
    site = subprocess.run(render, capture_output=True, text=True, timeout=30, check=True).stdout
    assert "listen 443 ssl" in site and "return 301 https://" in site and "listen 127.0.0.1" not in site
    assert not re.search(r"@[A-Z_]+@|#@", site), "a placeholder or block marker was left in"
    for n in range(1, 5):
        assert f"upstream clusterra_w{n} {{ server unix:/run/clusterra/daphne-{n}.sock; }}" in site
        assert f"server unix:/run/clusterra/daphne-{n}.sock max_fails=1 fail_timeout=10s;" in site
    (tmp_path / "clusterra.conf").write_text(site)
    temp_paths = "".join(f"{kind}_temp_path {tmp_path}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid; events {{}} http {{ include /etc/nginx/mime.types; {temp_paths} "
        f"include {tmp_path}/clusterra.conf; }}")
    nginx = Path("/usr/sbin/nginx")
    test = subprocess.run(check=False, args=[str(nginx), "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c",
                           str(tmp_path / "nginx.conf")], capture_output=True, text=True, timeout=30)
    assert test.returncode == 0, test.stderr

    for option, value in [("--server-name", "portal.example.org; include /etc/passwd"), ("--workers", "0"),
                          ("--socket-dir", "run/clusterra")]:
        bad = subprocess.run([*render, option, value], check=False, capture_output=True, text=True, timeout=30)
        assert bad.returncode == 2 and bad.stdout == "" and "nginx-site.sh:" in bad.stderr, (option, bad.stderr)


@pytest.fixture
def browser_page():
    with chromium_page(bypass_csp=True) as page:  # as tests/test_browser.py's: its waits use eval()
        yield page


@pytest.mark.browser
def test_the_browser_reattaches_through_nginx_after_a_reload_and_a_network_drop(prod, browser_page):
    """Two daphne processes: a reload and a dropped connection both get the same shell back."""
    proxy = CuttableProxy(int(prod.url.rsplit(":", 1)[1]))
    base = f"http://127.0.0.1:{proxy.port}"
    page = browser_page
    [(began,)] = prod.rows("SELECT now()")  # sessions of earlier tests may still be ending: count only this test's
    try:
        open_terminal_as_bob(page, base, path=TERMINAL_PATH, email="bob@demo.test", password=prod.password)
        assert "/ws/t/" in page.evaluate("window.clusterraTerminal.socketUrl")
        first = _browser_shell_pid(page)
        page.keyboard.type("export MARK=kept-$((40+2))\n")

        page.reload()
        page.wait_for_function("window.clusterraTerminal.state === 'connected'", timeout=20000)
        url = page.evaluate("window.clusterraTerminal.socketUrl")
        assert re.search(r"/ws/w/[12]/t/demo/c/local/terminal/\?.*attach=", url), url
        page.locator(".xterm").click()
        assert _browser_shell_pid(page) == first
        page.keyboard.type("echo mark=$MARK\n")
        _wait_for_line(page, "mark=kept-42")

        time.sleep(0.5)
        proxy.cut()  # the network drops: the page reconnects to the same process by itself
        page.wait_for_function("window.clusterraTerminal.state === 'reconnecting'", timeout=10000)
        page.wait_for_function("window.clusterraTerminal.state === 'connected'", timeout=30000)
        assert page.evaluate("window.clusterraTerminal.socketUrl").split("?")[0] == url.split("?")[0]
        page.locator(".xterm").click()
        assert _browser_shell_pid(page) == first
        # One live session, the first shell's: neither the reload nor the drop started another.
        live = prod.rows("SELECT backend_session_id FROM terminal_terminalsession WHERE ended_at IS NULL AND started_at >= %s", began)
        assert live == [(str(_leader_of(first)),)], live
        page.keyboard.type("exit\n")
        page.wait_for_function("window.clusterraTerminal.state === 'ended'", timeout=15000)
    finally:
        proxy.close()


def _browser_shell_pid(page) -> int:
    mark = secrets.token_hex(3)
    page.keyboard.type(f"echo {mark}=$$\n")
    line = page.wait_for_function(
        """(mark) => {
            const buf = window.clusterraTerminal.term.buffer.active;
            for (let i = 0; i < buf.length; i++) {
                const m = buf.getLine(i).translateToString(true).trim().match(new RegExp("^" + mark + "=(\\\\d+)$"));
                if (m) return m[1];
            }
            return null;
        }""",
        arg=mark, timeout=15000,
    )
    return int(line.json_value())


def _leader_of(pid: int) -> int:
    """The session leader of the shell's kernel session: the local backend's backend_session_id."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])

