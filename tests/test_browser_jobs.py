"""The job list and a job's page in Chromium, at desktop and phone widths: long names cut with an ellipsis
(the full name on hover), tables inside the page, times in the browser's time zone."""

import os
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from clusters.models import ClusterAccount
from jobs.models import Job
from tests.test_browser import chromium_page, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LONG_NAME = "preprocess-the-whole-ocean-temperature-dataset-for-the-2026-climate-ensemble-run-with-extra-long-suffix"
SUBMITTED = datetime(2026, 7, 1, 12, 0, 0, tzinfo=UTC)
VIEWPORTS = {"desktop": (1200, 800), "phone": (390, 844)}


@pytest.fixture
def jobs_in_cache(cast):
    bob = ClusterAccount.objects.get(cluster=cast.hpc, user=cast.bob)
    for i in range(30):
        Job.objects.create(cluster=cast.hpc, job_id=str(7000 + i), owner=bob, posix_user="bobby",
                           name=LONG_NAME if i == 29 else f"run {i}", partition="batch", state="RUNNING",
                           submit_time=SUBMITTED - timedelta(minutes=29 - i), start_time=SUBMITTED, time_limit=2 * 86400,
                           node_list="node-with-a-long-name-[001-128]", work_dir="/home/bobby/" + "deep/" * 20,
                           last_seen_at=timezone.now(), stdout_path="")
    return cast


def _overflow(page) -> int:
    """How far the page is wider than the viewport (0: no horizontal scrolling)."""
    return page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")


@pytest.mark.parametrize("viewport", VIEWPORTS, ids=list(VIEWPORTS))
def test_job_list_and_detail_fit_and_read_like_slurm(live_daphne, jobs_in_cache, viewport):
    width, height = VIEWPORTS[viewport]
    with chromium_page(bypass_csp=False) as page:
        page.context.clear_cookies()
        page.set_viewport_size({"width": width, "height": height})
        page.emulate_media(color_scheme="light")
        sign_in(page, live_daphne, "/t/acme/c/hpc/jobs/")
        page.wait_for_selector("table.jobs")
        # timezone.js tells the server the browser's zone and reloads once; the footer names the zone used.
        page.wait_for_selector("footer.page-footer:has-text('Times in Europe/Berlin')")
        cell = page.locator("td.job-name", has_text=LONG_NAME)
        assert cell.get_attribute("title") == LONG_NAME
        if viewport == "desktop":
            assert cell.evaluate("el => getComputedStyle(el).textOverflow") == "ellipsis"
            assert cell.evaluate("el => el.scrollWidth > el.clientWidth")  # cut, not wrapped
        assert "2026-07-01 14:00:00" in page.locator("table.jobs").inner_text()  # 12:00 UTC in Berlin's summer
        assert "2-00:00:00" in page.locator("table.jobs").inner_text()
        assert _overflow(page) <= 0, f"the job list is {_overflow(page)} px wider than a {width} px window"
        page.click("text=7029")
        page.wait_for_selector("table.job-facts")
        assert _overflow(page) <= 0, f"the job page is {_overflow(page)} px wider than a {width} px window"
        assert "2-00:00:00" in page.locator("table.job-facts").inner_text()
        if os.environ.get("CLUSTERRA_SCREENSHOTS"):
            page.screenshot(path=f"{os.environ['CLUSTERRA_SCREENSHOTS']}/job-{viewport}.png")
            page.go_back()
            page.screenshot(path=f"{os.environ['CLUSTERRA_SCREENSHOTS']}/jobs-{viewport}.png")


@pytest.fixture(autouse=True)
def _browser_zone(monkeypatch):
    """Chromium takes its time zone from TZ."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
