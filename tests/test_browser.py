"""One real browser end to end: Debian's Chromium, driven by Playwright, against daphne."""

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.db import connection

from accounts.models import User
from clusters.services import map_account
from tests.conftest import PASSWORD, _ensure_posix_user

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def browser_page():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Chromium is not installed (make test installs Debian's chromium)"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        yield page
        browser.close()


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

    # ?renderer=dom stores the preference and the page still works with the DOM renderer.
    page.goto(f"{live_daphne}/t/acme/c/hpc/terminal/?renderer=dom")
    page.wait_for_function("window.clusterraTerminal.state === 'connected'", timeout=15000)
    assert _in_thread(lambda: User.objects.get(pk=cast.bob.pk).terminal_renderer) == "dom"
    page.locator(".xterm").click()
    page.keyboard.type("exit\n")
    page.wait_for_function("window.clusterraTerminal.state === 'ended'", timeout=10000)
    assert "closed" in page.locator(".terminal-status").inner_text()
