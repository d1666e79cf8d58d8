"""Job pages that read like Slurm: durations in Slurm's format, times in the viewer's zone, how a job
ended, no Cancel once it is ending, "no output yet", and a list that agrees with the detail page."""

import base64
import re
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from clusters.executors import LocalExecutor
from clusters.models import ClusterAccount
from jobs import actions
from jobs.models import Job
from jobs.services import refresh_jobs
from tests.test_slurm_live import wait_for_state

pytestmark = pytest.mark.django_db

SUBMITTED = datetime(2026, 7, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def bob_jobs(cast, monkeypatch):
    """Cached jobs of bob; reading fresher state from Slurm is recorded, not run (these tests are about rendering)."""
    bob = ClusterAccount.objects.get(cluster=cast.hpc, user=cast.bob)
    synced = []
    monkeypatch.setattr(actions, "sync_job", lambda account, job_id: synced.append(job_id))

    def job(job_id, **fields):
        defaults = dict(cluster=cast.hpc, owner=bob, posix_user="bobby", partition="batch", submit_time=SUBMITTED,
                        last_seen_at=timezone.now(), node_list="node1", start_time=SUBMITTED + timedelta(minutes=1))
        return Job.objects.create(job_id=job_id, **{**defaults, **fields})

    cast.job, cast.synced, cast.bob_account = job, synced, bob
    return cast


def page(client, url) -> str:
    response = client.get(url)
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def test_durations_are_in_slurm_format_not_seconds(client, bob_jobs):
    bob_jobs.job("201", name="two days", state="RUNNING", time_limit=2 * 86400)
    bob_jobs.job("202", name="two hours", state="PENDING", time_limit=7200, start_time=None, node_list="")
    client.force_login(bob_jobs.bob)
    listing = page(client, "/t/acme/c/hpc/jobs/")
    assert "2-00:00:00" in listing and "2:00:00" in listing
    assert "172800" not in listing and "7200" not in listing
    assert "waiting " in listing  # a pending job says how long it has waited (in Slurm format too)
    detail = page(client, "/t/acme/c/hpc/jobs/201/")
    assert "2-00:00:00" in detail and "172800" not in detail


def test_times_are_in_the_viewers_zone(client, bob_jobs):
    bob_jobs.job("203", name="zoned", state="RUNNING")
    client.force_login(bob_jobs.bob)
    assert "2026-07-01 12:00:00" in page(client, "/t/acme/c/hpc/jobs/")  # no zone known yet: UTC
    client.cookies["clusterra_tz"] = "America/New_York"  # what static/js/timezone.js stores
    listing = page(client, "/t/acme/c/hpc/jobs/")
    assert "2026-07-01 08:00:00" in listing and "Times in America/New_York" in listing
    bob_jobs.bob.time_zone = "Asia/Tokyo"  # a choice in the preferences wins over the browser's
    bob_jobs.bob.save(update_fields=["time_zone"])
    assert "2026-07-01 21:00:00" in page(client, "/t/acme/c/hpc/jobs/203/")
    client.cookies["clusterra_tz"] = "Not/AZone"
    bob_jobs.bob.time_zone = ""
    bob_jobs.bob.save(update_fields=["time_zone"])
    assert "2026-07-01 12:00:00" in page(client, "/t/acme/c/hpc/jobs/")  # unknown names are ignored


def test_preferences_take_a_time_zone_and_refuse_an_unknown_one(client, bob_jobs):
    client.force_login(bob_jobs.bob)
    base = {"full_name": "Bob", "terminal_renderer": "auto"}
    assert client.post("/accounts/preferences/", {**base, "time_zone": "Europe/Berlin"}).status_code == 302
    bob_jobs.bob.refresh_from_db()
    assert bob_jobs.bob.time_zone == "Europe/Berlin"
    response = client.post("/accounts/preferences/", {**base, "time_zone": "Mars/Olympus"})
    assert response.status_code == 200
    bob_jobs.bob.refresh_from_db()
    assert bob_jobs.bob.time_zone == "Europe/Berlin"


def test_how_a_job_ended_and_no_cancel_once_it_is_ending(client, bob_jobs):
    end = SUBMITTED + timedelta(minutes=5)
    bob_jobs.job("204", name="killed", state="CANCELLED", exit_code=0, exit_signal=15, end_time=end, in_queue=False)
    bob_jobs.job("205", name="never ran", state="CANCELLED", exit_code=0, exit_signal=0, node_list="",
                 start_time=end, end_time=end, in_queue=False)
    bob_jobs.job("206", name="failing", state="FAILED", exit_code=3, exit_signal=0, end_time=end, in_queue=False)
    bob_jobs.job("207", name="ending", state="COMPLETING", exit_code=0, end_time=end)
    bob_jobs.job("208", name="running", state="RUNNING")
    client.force_login(bob_jobs.bob)
    assert "exit code 0, signal 15 (SIGTERM)" in page(client, "/t/acme/c/hpc/jobs/204/")
    never = page(client, "/t/acme/c/hpc/jobs/205/")
    assert "did not start" in never and "exit code 0" not in never
    assert "exit code 3" in page(client, "/t/acme/c/hpc/jobs/206/")
    assert "Cancel job" not in page(client, "/t/acme/c/hpc/jobs/207/")  # COMPLETING: nothing left to cancel
    assert "Cancel job" in page(client, "/t/acme/c/hpc/jobs/208/")
    listing = page(client, "/t/acme/c/hpc/jobs/")
    assert "exit code 0, signal 15 (SIGTERM)" in listing and "exit code 3" in listing


def test_a_pending_job_says_no_output_yet_without_running_tail(client, bob_jobs, monkeypatch):
    bob_jobs.job("209", name="waiting", state="PENDING", start_time=SUBMITTED + timedelta(hours=1), node_list="",
                 stdout_path="/home/bobby/slurm-209.out")

    def no_tail(*args, **kwargs):
        raise AssertionError("tail must not run for a pending job")

    monkeypatch.setattr(actions, "output_tail", no_tail)
    client.force_login(bob_jobs.bob)
    detail = page(client, "/t/acme/c/hpc/jobs/209/")
    assert "No output yet: the job has not started." in detail
    assert "Expected start" in detail


def test_long_names_are_cut_with_the_full_name_on_hover(client, bob_jobs):
    name = "a-very-long-job-name-" * 8
    bob_jobs.job("210", name=name, state="RUNNING")
    client.force_login(bob_jobs.bob)
    listing = page(client, "/t/acme/c/hpc/jobs/")
    assert re.search(rf'<td data-label="Name" class="job-name" title="{name}">{name}</td>', listing)


# --- against the live Slurm ---------------------------------------------------------------------------
def _sbatch(account, *args) -> str:
    result = LocalExecutor().run(account, ["sbatch", "--parsable", *args], timeout=30)
    assert result.ok, result.error_text()
    return result.stdout.decode().strip().split(";")[0]


@pytest.mark.slow
@pytest.mark.slurm
def test_a_job_from_the_terminal_shows_its_output_file_and_the_list_agrees(client, slurm_cast):
    c = slurm_cast
    home = c.posix.pw_dir
    out = f"{home}/terminal-job-%j.txt"
    job_id = _sbatch(c.bob_account, f"--chdir={home}", f"--output={out}", "--job-name=from terminal",
                     "--wrap=echo written by the terminal job; exit 4")
    job = wait_for_state(c.hpc, job_id, {"FAILED", "COMPLETED"})
    assert job.stdout_path == ""  # squeue does not say where the output goes
    client.force_login(c.bob)
    detail = page(client, f"/t/acme/c/hpc/jobs/{job_id}/")
    expected = out.replace("%j", job_id)
    assert expected in detail and "written by the terminal job" in detail and "exit code 4" in detail
    cached = Job.objects.get(cluster=c.hpc, job_id=job_id)
    assert (cached.stdout_path, cached.exit_code) == (expected, 4)  # the page's fresher read is in the cache too
    listing = page(client, "/t/acme/c/hpc/jobs/")
    row = re.search(rf'<tr>\s*<td data-label="Job"><a [^>]*>{job_id}</a>.*?</tr>', listing, re.S).group(0)
    assert "FAILED" in row and "exit code 4" in row


@pytest.mark.slow
@pytest.mark.slurm
def test_cancel_shows_at_once_in_list_and_detail(client, slurm_cast):
    c = slurm_cast
    job_id = _sbatch(c.bob_account, f"--chdir={c.posix.pw_dir}", "--output=/dev/null", "--wrap=sleep 300")
    wait_for_state(c.hpc, job_id, {"RUNNING"})
    client.force_login(c.bob)
    assert client.post(f"/t/acme/c/hpc/jobs/{job_id}/cancel/").status_code == 302
    deadline = time.monotonic() + 30
    while True:  # Slurm takes a moment to end the job after scancel; no poll runs meanwhile
        detail = page(client, f"/t/acme/c/hpc/jobs/{job_id}/")
        if "CANCELLED" in detail:
            break
        assert time.monotonic() < deadline, "the job never showed as cancelled"
        time.sleep(0.3)
    assert "Cancel job" not in detail and "signal 15 (SIGTERM)" in detail
    listing = page(client, "/t/acme/c/hpc/jobs/")
    row = re.search(rf'<tr>\s*<td data-label="Job"><a [^>]*>{job_id}</a>.*?</tr>', listing, re.S).group(0)
    assert "CANCELLED" in row
    refresh_jobs(c.hpc)  # and a poll afterwards does not take the exit back
    assert Job.objects.get(cluster=c.hpc, job_id=job_id).exit_signal == 15


@pytest.mark.slow
@pytest.mark.slurm
def test_a_held_job_says_no_output_yet(client, slurm_cast):
    c = slurm_cast
    job_id = _sbatch(c.bob_account, "--hold", f"--chdir={c.posix.pw_dir}", "--wrap=true")
    wait_for_state(c.hpc, job_id, {"PENDING"})
    client.force_login(c.bob)
    detail = page(client, f"/t/acme/c/hpc/jobs/{job_id}/")
    assert "No output yet: the job has not started." in detail and "tail:" not in detail


def test_the_list_pages_through_older_jobs(client, bob_jobs):
    for i in range(60):
        bob_jobs.job(str(300 + i), name=f"run {i}", state="COMPLETED", submit_time=SUBMITTED + timedelta(minutes=i))
    client.force_login(bob_jobs.bob)
    first = page(client, "/t/acme/c/hpc/jobs/?state=COMPLETED")
    assert first.count('<td data-label="Job">') == 50 and ">359<" in first and ">310<" in first and ">309<" not in first
    older = re.search(r'href="\?([^"]*cursor=[^"]+)">Older jobs', first).group(1).replace("&amp;", "&")
    assert "state=COMPLETED" in older  # the filters stay
    second = page(client, f"/t/acme/c/hpc/jobs/?{older}")
    assert second.count('<td data-label="Job">') == 10 and ">309<" in second and ">300<" in second
    assert "Older jobs" not in second and "← Newest" in second
    assert client.get("/t/acme/c/hpc/jobs/?cursor=not-a-cursor").status_code == 404
    # A stamp that parses but cannot be converted to UTC (year 1 at +05:00) is refused too, not a 500.
    crafted = base64.urlsafe_b64encode(b"0001-01-01T00:00:00+05:00|1").decode().rstrip("=")
    assert client.get(f"/t/acme/c/hpc/jobs/?cursor={crafted}").status_code == 404


@pytest.mark.slow
@pytest.mark.slurm
def test_a_requeued_job_loses_its_old_exit_code(client, slurm_cast):
    c = slurm_cast
    job_id = _sbatch(c.bob_account, f"--chdir={c.posix.pw_dir}", "--output=/dev/null", "--wrap=sleep 2; exit 3")
    deadline = time.monotonic() + 60
    while (job := Job.objects.filter(cluster=c.hpc, job_id=job_id).first()) is None or job.exit_code != 3:
        assert time.monotonic() < deadline, f"the exit code never arrived: {job and (job.state, job.exit_code)}"
        refresh_jobs(c.hpc)
        time.sleep(0.3)
    requeue = LocalExecutor().run(c.bob_account, ["scontrol", "requeuehold", job_id], timeout=30)  # runs again once released
    assert requeue.ok, requeue.error_text()
    job = wait_for_state(c.hpc, job_id, {"PENDING", "REQUEUE_HOLD", "REQUEUED"})
    assert (job.exit_code, job.exit_signal) == (None, None), "a job waiting to run again still shows its old exit"
    client.force_login(c.bob)
    detail = page(client, f"/t/acme/c/hpc/jobs/{job_id}/")
    assert "exit code 3" not in detail and "Cancel job" in detail  # a held, requeued job can be cancelled


def test_the_job_page_asks_slurm_once_per_refresh_interval(client, bob_jobs):
    """The page refreshes every 5 s; each read is a command on the head node (a SendCommand on SSM)."""
    bob_jobs.job("401", name="running", state="RUNNING")  # no output file known yet
    client.force_login(bob_jobs.bob)
    page(client, "/t/acme/c/hpc/jobs/401/")
    assert bob_jobs.synced == ["401"]  # once, not again by the output panel
    page(client, "/t/acme/c/hpc/jobs/401/")
    assert bob_jobs.synced == ["401"]  # a moment later: the cache row has it
