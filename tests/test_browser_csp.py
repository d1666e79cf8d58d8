"""The pages work under the Content-Security-Policy: Debian's Chromium records every violation.

Covers sign-in, the terminal (WebGL and DOM renderers, typing and an answer, a resize), a job list with
htmx polling, a job's page with its confirm-before-cancel, and /v1/docs (Swagger UI from ninja's own static
files). Nothing is excluded from the policy. The page is not told to bypass it, so Playwright's
wait_for_function (an eval() inside the page, which the policy refuses) is not used: conditions are polled
with page.evaluate, which runs through the DevTools protocol.
"""

import time

import pytest

from audit.models import AuditEvent
from clusters.models import ClusterAccount
from jobs.actions import SubmitRequest, submit_job
from jobs.models import Job
from tests.test_browser import _in_thread, bob_posix, chromium_page, sign_in  # noqa: F401 (bob_posix is a fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.slurm]

# Runs before any page script: every violation the browser reports, enforced or report-only.
def watch_console(page) -> list[str]:
    """The page's console lines and errors, as they come (also page.console_lines, for _until's failure message),
    and every Content-Security-Policy violation in window.__csp."""
    console: list[str] = []
    page.console_lines = console
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    page.add_init_script(_COLLECT_VIOLATIONS)
    return console


_COLLECT_VIOLATIONS = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => window.__csp.push(
    {directive: e.effectiveDirective, blocked: e.blockedURI, disposition: e.disposition, source: e.sourceFile, line: e.lineNumber}));
"""

_HAS_LINE = """(text) => {
    const t = window.clusterraTerminal;
    if (!t) return false;
    const buf = t.term.buffer.active;
    for (let i = 0; i < buf.length; i++) if (buf.getLine(i).translateToString(true).trim() === text) return true;
    return false;
}"""


@pytest.fixture
def strict_page():
    with chromium_page(bypass_csp=False) as page:
        yield page


def _until(page, function: str, arg=None, timeout: float = 15.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while not page.evaluate(function, arg):
        assert time.monotonic() < deadline, (f"not in time: {what or function}", page.evaluate("() => window.__csp"),
                                             getattr(page, "console_lines", []))
        page.wait_for_timeout(100)  # lets Playwright dispatch page events meanwhile


def _connected(page):
    _until(page, "() => !!window.clusterraTerminal && window.clusterraTerminal.state === 'connected'", what="terminal connected")


def _whoami(page, user: str):
    page.locator(".xterm").click()
    page.keyboard.type("whoami\n")
    _until(page, _HAS_LINE, user, what=f"the line {user!r}")


def test_terminal_jobs_and_api_docs_under_the_policy(cast, bob_posix, live_slurm, live_daphne, strict_page):  # noqa: F811
    page = strict_page
    seen: list[tuple[str, list[dict]]] = []
    console = watch_console(page)

    def visited(name: str):
        seen.append((name, page.evaluate("() => window.__csp")))

    def header(response) -> str:
        policy = response.headers.get("content-security-policy", "")
        assert "default-src 'self'" in policy and "object-src 'none'" in policy, policy
        return policy

    # Sign-in, then the terminal with the default renderer: WebGL (Chromium's software GL here).
    header(sign_in(page, live_daphne, "/t/acme/c/hpc/terminal/"))
    _connected(page)
    assert page.evaluate("() => !!document.querySelector('.xterm-screen canvas')"), "the WebGL renderer is not in use"
    _whoami(page, bob_posix.pw_name)
    cols = page.evaluate("() => window.clusterraTerminal.term.cols")
    page.set_viewport_size({"width": 800, "height": 600})  # xterm.js restyles on resize (xtermjs#4445)
    _until(page, "(cols) => window.clusterraTerminal.term.cols < cols", cols, what="the terminal fits the smaller window")
    visited("sign-in and terminal, WebGL renderer")

    # The DOM renderer, which writes <style> elements and style attributes.
    policy = header(page.goto(f"{live_daphne}/t/acme/c/hpc/terminal/?renderer=dom"))
    assert "script-src 'self' 'nonce-" in policy  # the import map carries the request's nonce
    _connected(page)
    assert page.evaluate("() => !document.querySelector('.xterm-screen canvas') && !!document.querySelector('.xterm-rows')")
    _whoami(page, bob_posix.pw_name)
    visited("terminal, DOM renderer")

    # A job list that htmx refreshes, and a job's page where cancelling asks first (a script file, no inline handler).
    job = _in_thread(lambda: submit_job(ClusterAccount.objects.get(cluster=cast.hpc, user=cast.bob),
                                        SubmitRequest(script="#!/bin/bash\nsleep 300\n", time_limit="5"), actor=cast.bob))
    header(page.goto(f"{live_daphne}/t/acme/c/hpc/jobs/"))
    page.evaluate("() => { window.__swaps = 0; document.body.addEventListener('htmx:afterSwap', () => window.__swaps++); }")
    _until(page, "() => window.__swaps > 0", what="an htmx refresh of the job list")  # every 5 s
    visited("job list")
    header(page.goto(f"{live_daphne}/t/acme/c/hpc/jobs/{job.job_id}/"))
    questions: list[str] = []

    def answer(accept: bool):
        page.once("dialog", lambda d: (questions.append(d.message), d.accept() if accept else d.dismiss()))

    answer(False)
    page.click("form[data-confirm] button[type=submit]")
    assert questions == [f"Cancel job {job.job_id}?"]
    cancelled = lambda: AuditEvent.objects.filter(action="job.cancel", target_id=str(job.pk)).exists()  # noqa: E731
    assert page.url.endswith(f"/jobs/{job.job_id}/") and not _in_thread(cancelled)
    answer(True)
    with page.expect_navigation():
        page.click("form[data-confirm] button[type=submit]")
    assert len(questions) == 2
    assert _in_thread(cancelled)
    assert _in_thread(lambda: Job.objects.get(pk=job.pk).state) in ("CANCELLED", "COMPLETING")  # as scontrol said just after
    visited("job page")

    # The API's interactive docs, and the operations they read from /v1/openapi.json.
    header(page.goto(f"{live_daphne}/v1/docs"))
    page.wait_for_selector(".swagger-ui .info .title", timeout=15000)
    assert "Clusterra API" in page.locator(".swagger-ui .info .title").inner_text()
    page.wait_for_selector(".opblock", timeout=15000)
    visited("/v1/docs")

    assert all(not found for _, found in seen), seen
    assert not [line for line in console if "Content Security Policy" in line or "Refused to" in line], console

    # The collector does see a violation: an inline script is refused and reported.
    page.evaluate("() => { const s = document.createElement('script'); s.textContent = 'window.__ran = 1'; document.body.append(s); }")
    _until(page, "() => window.__csp.length > 0", timeout=5, what="the probe's violation")
    assert page.evaluate("() => window.__ran === undefined")
    assert page.evaluate("() => window.__csp[0].directive") == "script-src-elem"
