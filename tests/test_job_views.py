"""Job pages: list/detail from the cache (with the cast), submit and cancel on the live Slurm."""


import pytest
from django.utils import timezone

from clusters.executors import LocalExecutor
from clusters.models import ClusterAccount
from jobs.models import Job, Partition

pytestmark = pytest.mark.django_db


@pytest.fixture
def cached_jobs(cast):
    bob = ClusterAccount.objects.get(cluster=cast.hpc, user=cast.bob)
    alice = ClusterAccount.objects.get(cluster=cast.hpc, user=cast.alice)
    now = timezone.now()
    Job.objects.create(cluster=cast.hpc, job_id="101", owner=bob, posix_user="bobby", name="bob's run", partition="debug",
                       state="RUNNING", work_dir="/home/bobby/proj", submit_time=now, last_seen_at=now)
    Job.objects.create(cluster=cast.hpc, job_id="102", owner=alice, posix_user="alicia", name="alice's run", partition="batch",
                       state="PENDING", submit_time=now, last_seen_at=now)
    Partition.objects.create(cluster=cast.hpc, name="debug", is_default=True, cpus_total=8, cpus_idle=7, nodes_total=1, updated_at=now)
    return cast


def test_my_jobs_and_all_jobs(client, cached_jobs, django_assert_max_num_queries):
    c = cached_jobs
    client.force_login(c.bob)
    with django_assert_max_num_queries(8):
        page = client.get("/t/acme/c/hpc/jobs/").content.decode()
    assert "bob&#x27;s run" in page and "alice&#x27;s run" not in page
    assert "alice&#x27;s run" not in client.get("/t/acme/c/hpc/jobs/?scope=all").content.decode()  # members: own only
    client.force_login(c.alice)
    everything = client.get("/t/acme/c/hpc/jobs/?scope=all").content.decode()
    assert "bob&#x27;s run" in everything and "alice&#x27;s run" in everything
    filtered = client.get("/t/acme/c/hpc/jobs/?scope=all&state=pending").content.decode()
    assert "alice&#x27;s run" in filtered and "bob&#x27;s run" not in filtered


def test_live_refresh_returns_only_the_table(client, cached_jobs):
    client.force_login(cached_jobs.bob)
    partial = client.get("/t/acme/c/hpc/jobs/", HTTP_HX_REQUEST="true").content.decode()
    assert partial.lstrip().startswith("<table") and "<html" not in partial


def test_job_detail_and_open_terminal_link(client, cached_jobs):
    client.force_login(cached_jobs.bob)
    page = client.get("/t/acme/c/hpc/jobs/101/").content.decode()
    assert "Job 101" in page and "/t/acme/c/hpc/terminal/?cwd=/home/bobby/proj" in page
    assert "Cancel job" in page
    assert client.get("/t/acme/c/hpc/jobs/102/").status_code == 404  # alice's job: not bob's to see


def test_cluster_page_shows_partitions(client, cached_jobs):
    client.force_login(cached_jobs.bob)
    page = client.get("/t/acme/c/hpc/").content.decode()
    assert "debug" in page and "7 / 0 / 8" in page


def test_other_tenant_gets_404(client, cached_jobs):
    client.force_login(cached_jobs.charlie)
    for url in ("/t/acme/c/hpc/jobs/", "/t/acme/c/hpc/jobs/101/", "/t/acme/c/hpc/jobs/submit/"):
        assert client.get(url).status_code == 404, url


@pytest.mark.slow
@pytest.mark.slurm
def test_submit_form_and_cancel(client, slurm_cast):
    c = slurm_cast
    script = f"{c.posix.pw_dir}/form-job.sh"
    assert LocalExecutor().run(c.bob_account, ["sh", "-c", 'printf "#!/bin/bash\\nsleep 120\\n" > "$1"', "sh", script]).ok
    client.force_login(c.bob)
    bad = client.post("/t/acme/c/hpc/jobs/submit/", {"script_path": "/etc/passwd"})
    assert bad.status_code == 200 and "must be inside" in bad.content.decode()
    refused = client.post("/t/acme/c/hpc/jobs/submit/", {"script_path": script, "partition": "nosuch"})
    assert "Invalid partition name specified" in refused.content.decode()
    response = client.post("/t/acme/c/hpc/jobs/submit/", {"script_path": script, "name": "from the form", "time_limit": "5"})
    assert response.status_code == 302
    job = Job.objects.get(cluster=c.hpc, name="from the form")
    assert response["Location"] == f"/t/acme/c/hpc/jobs/{job.job_id}/"
    cancelled = client.post(f"/t/acme/c/hpc/jobs/{job.job_id}/cancel/", follow=True)
    assert f"Job {job.job_id} cancelled." in cancelled.content.decode()
    job.refresh_from_db()
    assert job.state in ("CANCELLED", "COMPLETING")
