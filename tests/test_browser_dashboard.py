"""The dashboard in Chromium at desktop and phone widths: clusters, jobs, quotas collected from the live Slurm,
and a terminal whose tab went away shown as detached, reattached from the dashboard to the same shell."""

import os
import secrets
import subprocess
from datetime import timedelta

import pytest
from django.utils import timezone

from clusters import quotas
from clusters.models import ClusterAccount
from jobs.models import Job
from terminal.models import TerminalSession
from tests.conftest import PASSWORD
from tests.test_browser import _in_thread, _wait_for, _wait_for_line, bob_posix, chromium_page  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.slurm]

LONG_NAME = "assemble-the-complete-genome-of-every-sample-in-the-2026-sequencing-campaign-with-a-very-long-suffix"


def _overflow(page) -> int:
    """How far the page is wider than the viewport (0: no horizontal scrolling)."""
    return page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")


def _sh(*argv):
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60)


@pytest.fixture
def dashboard_data(cast, bob_posix, live_slurm):  # noqa: F811 (bob_posix is the fixture imported above)
    """bob's jobs in the cache, and his quotas collected for real, with a Slurm association that has limits."""
    if os.geteuid() != 0:
        pytest.skip("needs root to add a Slurm association")
    slurm_account = "ch3" + secrets.token_hex(4)
    assert _sh("sacctmgr", "-i", "add", "account", slurm_account).returncode == 0
    assert _sh("sacctmgr", "-i", "add", "user", bob_posix.pw_name, f"account={slurm_account}", "MaxWall=2-00:00:00",
               "GrpTRESMins=cpu=60000").returncode == 0
    account = ClusterAccount.objects.select_related("cluster").get(cluster=cast.hpc, user=cast.bob)
    now = timezone.now()
    for i, (state, name) in enumerate([("RUNNING", LONG_NAME), ("PENDING", "waits"), ("COMPLETED", "done")]):
        Job.objects.create(cluster=cast.hpc, owner=account, job_id=str(9100 + i), posix_user=bob_posix.pw_name, name=name,
                           partition="batch", state=state, in_queue=state != "COMPLETED", submit_time=now - timedelta(minutes=10 - i),
                           start_time=now - timedelta(minutes=10) if state != "PENDING" else None,
                           end_time=now if state == "COMPLETED" else None, exit_code=0 if state == "COMPLETED" else None,
                           time_limit=2 * 86400, last_seen_at=now)
    usage = quotas.collect(account)
    assert usage.error == "" and usage.associations and usage.storage
    yield cast
    _sh("sacctmgr", "-i", "delete", "user", bob_posix.pw_name, f"account={slurm_account}")
    _sh("sacctmgr", "-i", "delete", "account", slurm_account)


def _detached(session_id) -> bool:
    return TerminalSession.objects.filter(pk=session_id, ended_at__isnull=True, detached_at__isnull=False).exists()


def _connected(page):
    page.wait_for_function("window.clusterraTerminal && window.clusterraTerminal.state === 'connected'", timeout=15000)


def test_dashboard_shows_everything_and_reattaches_a_closed_tabs_terminal(dashboard_data, bob_posix, live_daphne, settings,  # noqa: F811
                                                                          tmp_path):
    with chromium_page(bypass_csp=True) as page:
        page.goto(f"{live_daphne}/accounts/login/?next=/t/acme/c/hpc/terminal/")
        page.fill("input[name=username]", "bob@acme.test")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        _connected(page)
        page.locator(".xterm").click()
        page.keyboard.type("export MARK=dash-$((6*7))\n")
        session_id = _in_thread(lambda: str(TerminalSession.objects.get(user=dashboard_data.bob, ended_at__isnull=True).pk))

        # The tab leaves the terminal: the shell stays, detached, and the dashboard says for how long.
        page.goto(f"{live_daphne}/")
        _wait_for(lambda: _detached(session_id))
        page.reload()
        row = page.locator(f"tr.dashboard-session[data-session='{session_id}']")
        assert "detached, reattachable for" in row.inner_text() and "live" not in row.inner_text()
        assert row.locator("a", has_text="Reattach").is_visible()
        clusters = page.locator("#clusters").inner_text()
        assert "Acme HPC" in clusters and bob_posix.pw_name in clusters
        jobs = page.locator("#jobs").inner_text()
        assert "9100" in jobs and "9101" in jobs and "9102" in jobs and "2-00:00:00" in jobs
        name = page.locator("#jobs td.job-name", has_text=LONG_NAME)
        assert name.get_attribute("title") == LONG_NAME and name.evaluate("el => el.scrollWidth > el.clientWidth")  # cut
        quota = page.locator(".quota-card[data-cluster='hpc']").inner_text()
        assert "Time limit per job" in quota and "2-00:00:00" in quota and "60,000 CPU-minutes" in quota
        assert f"/home/{bob_posix.pw_name}" in quota or bob_posix.pw_dir in quota
        assert page.locator(".quota-card meter").count() >= 2  # CPU-time used, and the home directory
        assert _overflow(page) <= 0
        page.screenshot(path=str(tmp_path / "dashboard-desktop.png"), full_page=True)

        # Reattach: the same shell, its variables still set.
        row.locator("a", has_text="Reattach").click()
        _connected(page)
        assert "attach=" not in page.url  # a reload must not name the session again
        page.locator(".xterm").click()
        page.keyboard.type("echo mark=$MARK\n")
        _wait_for_line(page, "mark=dash-42")
        assert _in_thread(lambda: TerminalSession.objects.get(pk=session_id).detached_at) is None

        # On a phone: the same, inside the screen.
        page.set_viewport_size({"width": 390, "height": 844})
        page.goto(f"{live_daphne}/")
        _wait_for(lambda: _detached(session_id))
        page.reload()
        row = page.locator(f"tr.dashboard-session[data-session='{session_id}']")
        assert "detached, reattachable for" in row.inner_text()
        assert page.locator(".quota-card[data-cluster='hpc']").is_visible()
        assert _overflow(page) <= 0, f"the dashboard is {_overflow(page)} px wider than a 390 px screen"
        page.screenshot(path=str(tmp_path / "dashboard-phone.png"), full_page=True)
        row.locator("a", has_text="Reattach").click()
        _connected(page)
        page.locator(".xterm").click()
        page.keyboard.type("echo again=$MARK\n")
        _wait_for_line(page, "again=dash-42")
        page.click(".terminal-new")  # ends the shell
        _wait_for(lambda: TerminalSession.objects.get(pk=session_id).ended_at is not None)
