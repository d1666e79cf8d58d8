"""One real browser end to end: Debian's Chromium, driven by Playwright, against daphne."""

import contextlib
import os
import shutil
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from accounts.models import User
from clusters.services import map_account
from terminal.backends.local_pty import session_pids
from terminal.models import TerminalSession
from tests.conftest import PASSWORD, _ensure_posix_user

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@contextlib.contextmanager
def chromium_page(*, bypass_csp: bool):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Chromium is not installed (make test installs Debian's chromium)"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )
        page = browser.new_page(viewport={"width": 1200, "height": 800}, bypass_csp=bypass_csp)
        yield page
        browser.close()


@pytest.fixture
def browser_page():
    # Playwright's wait_for_function evaluates its predicate with eval() inside the page, which the portal's
    # Content-Security-Policy refuses; tests/test_browser_csp.py drives the pages under the policy.
    with chromium_page(bypass_csp=True) as page:
        yield page


def _terminal_text(page) -> str:
    return page.evaluate("""() => {
        const buf = window.clusterraTerminal.term.buffer.active;
        const lines = [];
        for (let i = 0; i < buf.length; i++) lines.push(buf.getLine(i).translateToString(true));
        return lines.join("\\n");
    }""")


def _in_thread(fn):
    """Playwright's sync API runs an event loop in this thread, so the ORM must run in another."""
    def run():
        try:
            return fn()
        finally:
            connection.close()  # this thread's own connection, or the test database cannot be dropped

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


@pytest.fixture
def bob_posix(cast):
    """Bob maps to a POSIX user named bob, as in the demo (the tests' own user when not root)."""
    entry = _ensure_posix_user("bob") if os.geteuid() == 0 else cast.posix
    map_account(cluster=cast.hpc, user=cast.bob, posix_username=entry.pw_name, uid=entry.pw_uid)
    return entry


def test_bob_signs_in_opens_the_terminal_and_runs_whoami(cast, bob_posix, live_daphne, browser_page, tmp_path):
    page = browser_page
    page.goto(f"{live_daphne}/t/acme/c/hpc/terminal/")
    assert "/accounts/login/" in page.url
    page.fill("input[name=username]", "bob@acme.test")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_daphne}/t/acme/c/hpc/terminal/")
    page.wait_for_function("window.clusterraTerminal && window.clusterraTerminal.state === 'connected'", timeout=15000)
    page.locator(".xterm").click()
    page.keyboard.type("whoami\n")
    page.wait_for_function(
        """(user) => {
            const buf = window.clusterraTerminal.term.buffer.active;
            for (let i = 0; i < buf.length; i++) if (buf.getLine(i).translateToString(true).trim() === user) return true;
            return false;
        }""",
        arg=bob_posix.pw_name, timeout=10000,
    )
    page.screenshot(path=str(tmp_path / "terminal.png"))
    assert f"\n{bob_posix.pw_name}\n" in _terminal_text(page) + "\n"
    assert page.locator(".terminal-status").inner_text().lower().startswith("connected")

    # ?renderer=dom stores the preference; the reload reattaches to the same shell, scrollback included.
    page.keyboard.type("export MARK=kept-$((40+2))\n")
    first_session = _in_thread(lambda: TerminalSession.objects.get(user=cast.bob, ended_at__isnull=True).pk)
    page.goto(f"{live_daphne}/t/acme/c/hpc/terminal/?renderer=dom")
    page.wait_for_function("window.clusterraTerminal.state === 'connected'", timeout=15000)
    assert _in_thread(lambda: User.objects.get(pk=cast.bob.pk).terminal_renderer) == "dom"
    page.wait_for_function("() => window.clusterraTerminal.term.buffer.active.getLine(0) !== undefined", timeout=5000)
    page.locator(".xterm").click()
    page.keyboard.type("echo mark=$MARK\n")
    _wait_for_line(page, "mark=kept-42")
    assert "export MARK" in _terminal_text(page)  # replayed scrollback from before the reload
    assert _in_thread(lambda: list(TerminalSession.objects.filter(user=cast.bob).values_list("pk", flat=True))) == [first_session]

    # "New session" ends the old shell at once and opens a fresh one.
    page.click(".terminal-new")
    page.wait_for_function("window.clusterraTerminal.state === 'connected'", timeout=15000)
    _wait_for(lambda: TerminalSession.objects.get(pk=first_session).end_message == "Ended by the user.")
    page.locator(".xterm").click()
    page.keyboard.type("echo mark=${MARK:-unset}\n")
    _wait_for_line(page, "mark=unset")
    page.keyboard.type("exit\n")
    page.wait_for_function("window.clusterraTerminal.state === 'ended'", timeout=10000)
    assert "closed" in page.locator(".terminal-status").inner_text()


def test_stopping_the_server_ends_a_detached_session(cast, bob_posix, live_daphne, browser_page):
    """A session waiting for its browser has no consumer; daphne's shutdown must still end it."""
    page = browser_page
    open_terminal_as_bob(page, live_daphne)
    page.keyboard.type("sleep 1000 & echo st''arted\n")
    _wait_for_line(page, "started", exact=False)
    page.goto("about:blank")  # the socket closes; the session waits for a reattach
    session = _in_thread(lambda: TerminalSession.objects.get(user=cast.bob))
    sid = int(session.backend_session_id)
    assert session.ended_at is None and session_pids(sid)
    live_daphne.proc.send_signal(signal.SIGTERM)
    live_daphne.proc.wait(timeout=15)
    session = _in_thread(lambda: TerminalSession.objects.get(pk=session.pk))
    assert session.end_reason == "server_shutdown"
    assert session_pids(sid) == []


def sign_in(page, base_url: str, path: str, *, email="bob@acme.test", password=PASSWORD):
    """Sign in on the login page and wait for the redirect to `path` (its ?next=); the login page's response."""
    response = page.goto(f"{base_url}/accounts/login/?next={path}")
    page.fill("input[name=username]", email)
    page.fill("input[name=password]", password)
    with page.expect_navigation():
        page.click("button[type=submit]")
    return response


def open_terminal_as_bob(page, base_url: str, *, path="/t/acme/c/hpc/terminal/", email="bob@acme.test", password=PASSWORD):
    """Sign in on the login page and wait until the terminal is connected and focused."""
    sign_in(page, base_url, path, email=email, password=password)
    page.wait_for_function("window.clusterraTerminal && window.clusterraTerminal.state === 'connected'", timeout=15000)
    page.locator(".xterm").click()


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not _in_thread(predicate):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def _wait_for_line(page, text: str, exact: bool = True, timeout: int = 10000):
    page.wait_for_function(
        """([text, exact]) => {
            const buf = window.clusterraTerminal.term.buffer.active;
            for (let i = 0; i < buf.length; i++) {
                const line = buf.getLine(i).translateToString(true).trim();
                if (exact ? line === text : line.includes(text)) return true;
            }
            return false;
        }""",
        arg=[text, exact], timeout=timeout,
    )


class CuttableProxy:
    """A TCP proxy in front of daphne whose open connections the test can cut, like a network drop."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self):
        self.listener.close()
        self.cut()


def test_a_dropped_connection_reattaches_by_itself(cast, bob_posix, live_daphne, browser_page):
    proxy = CuttableProxy(int(live_daphne.rsplit(":", 1)[1]))
    base = f"http://127.0.0.1:{proxy.port}"
    page = browser_page
    try:
        open_terminal_as_bob(page, base)
        page.keyboard.type("export MARK=survived-$((50+5))\n")
        time.sleep(0.5)
        proxy.cut()  # the network drops: the page sees its socket close and reconnects with attach=<id>
        page.wait_for_function("window.clusterraTerminal.state === 'reconnecting'", timeout=10000)
        page.wait_for_function("window.clusterraTerminal.state === 'connected'", timeout=20000)
        page.locator(".xterm").click()
        page.keyboard.type("echo mark=$MARK\n")
        _wait_for_line(page, "mark=survived-55")
        assert _in_thread(lambda: TerminalSession.objects.filter(user=cast.bob).count()) == 1
        assert "Connected" in page.locator(".terminal-status").inner_text()
    finally:
        proxy.close()


def test_the_page_acks_typing_about_once_a_second_and_bulk_output_at_the_threshold(cast, bob_posix, live_daphne, browser_page):
    """Every ACK frame costs the relay as much as a keystroke, so typing must not send one per echo; output larger
    than the ack window must still flow (docs/terminal-protocol.md, Flow control)."""
    page = browser_page
    sent = []  # (time, payload) of every frame the page sends
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append((time.monotonic(), payload))))
    open_terminal_as_bob(page, live_daphne)
    page.keyboard.type("cat > /dev/null\n")
    _wait_for_line(page, "cat > /dev/null", exact=False)
    start = time.monotonic()
    page.keyboard.type("x" * 30, delay=100)  # 10 keys/s, each echoed by the tty
    _wait_for_line(page, "x" * 30)
    typed_for = time.monotonic() - start

    def acks_since(t):
        return [p for at, p in sent if at >= t and isinstance(p, bytes) and p[:1] == b"\x03"]

    inputs = [p for at, p in sent if at >= start and isinstance(p, bytes) and p[:1] == b"\x01"]
    assert len(inputs) >= 30
    assert len(acks_since(start)) <= typed_for + 2, f"{len(acks_since(start))} ACKs for {len(inputs)} keystrokes"
    deadline = time.monotonic() + 5
    while not acks_since(start):  # the echoes are acknowledged all the same, within a second
        assert time.monotonic() < deadline, "no ACK within 5 s of the echoes"
        page.wait_for_timeout(50)
    # Twice the ack window (512 KiB): it only finishes if the page acks at the threshold while it renders.
    page.keyboard.press("Control+C")
    page.keyboard.type("head -c 1100000 /dev/zero | tr '\\0' y | fold -w 1000; echo; echo __BU''LK__\n")
    _wait_for_line(page, "__BULK__", timeout=60000)
    assert sum(int.from_bytes(p[1:5], "big") for p in acks_since(start)) >= 1_100_000 - settings.TERMINAL_HIGH_WATERMARK
