"""REST API /v1 against the live Slurm, with tokens and sessions, and the tenant cast."""

import time
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from accounts.models import ApiToken
from accounts.services import create_api_token, revoke_api_token
from clusters.executors import LocalExecutor
from jobs.models import Job
from jobs.services import refresh_jobs
from tests.test_audit_api import EXPECTED_STATUSES as AUDIT_STATUSES
from tests.test_slurm_live import wait_for_state

pytestmark = [pytest.mark.django_db, pytest.mark.slow, pytest.mark.slurm]


def bearer(token: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


@pytest.fixture
def api(slurm_cast):
    c = slurm_cast
    _, c.bob_token = create_api_token(user=c.bob, tenant=c.acme, name="test")
    _, c.alice_token = create_api_token(user=c.alice, tenant=c.acme, name="test")
    _, c.charlie_token = create_api_token(user=c.charlie, tenant=c.other, name="test")
    c.jobs_url = f"/v1/clusters/{c.hpc.pk}/jobs"
    c.client = Client()
    return c


def write_script(account, name: str, body: str) -> str:
    path = f"/home/{account.posix_username}/{name}"
    assert LocalExecutor().run(account, ["sh", "-c", 'cat > "$1"', "sh", path], stdin=body.encode()).ok
    return path


def test_token_command_prints_a_working_token(api):
    out = StringIO()
    call_command("create_api_token", "bob@acme.test", stdout=out)
    token = out.getvalue().strip()
    assert token.startswith("ctk_")
    stored = ApiToken.objects.filter(user=api.bob).latest("created_at")
    assert token.split("_", 2)[2] not in stored.secret_hash  # only a hash is kept
    response = api.client.get("/v1/clusters", **bearer(token))
    assert response.status_code == 200
    assert [c["slug"] for c in response.json()] == ["hpc"]


def test_bad_expired_and_revoked_tokens(api):
    assert api.client.get("/v1/clusters", **bearer("ctk_nope_nope")).status_code == 401
    assert api.client.get("/v1/clusters").status_code == 401
    token, text = create_api_token(user=api.bob, tenant=api.acme, name="old")
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert api.client.get("/v1/clusters", **bearer(text)).status_code == 401
    token, text = create_api_token(user=api.bob, tenant=api.acme, name="revoked")
    revoke_api_token(token, actor=api.alice)
    assert api.client.get("/v1/clusters", **bearer(text)).status_code == 401


def test_submit_list_show_output(api):
    script = write_script(api.bob_account, "api-hello.sh", "#!/bin/bash\necho api says hi\n")
    response = api.client.post(api.jobs_url, {"script_path": script, "name": "api job"}, content_type="application/json",
                               **bearer(api.bob_token))
    assert response.status_code == 201, response.content
    job = response.json()
    assert job["name"] == "api job" and job["user"] == api.posix.pw_name and job["work_dir"] == api.posix.pw_dir
    deadline = time.monotonic() + 30
    while Job.objects.get(cluster=api.hpc, job_id=job["job_id"]).state != "COMPLETED":
        assert time.monotonic() < deadline
        refresh_jobs(api.hpc)
        time.sleep(0.3)
    detail = api.client.get(f"{api.jobs_url}/{job['job_id']}", **bearer(api.bob_token)).json()
    assert detail["state"] == "COMPLETED"
    output = api.client.get(f"{api.jobs_url}/{job['job_id']}/output?tail=5", **bearer(api.bob_token))
    assert output.status_code == 200 and output.json()["text"] == "api says hi\n"
    listed = api.client.get(f"{api.jobs_url}?state=completed", **bearer(api.bob_token)).json()
    assert job["job_id"] in [j["job_id"] for j in listed["items"]]


def test_pagination_and_filters(api):
    now = timezone.now()
    for i in range(5):  # inserted out of submission order: the list is by submit time, newest first
        Job.objects.create(cluster=api.hpc, job_id=str(900000 + i), owner=api.bob_account, posix_user=api.posix.pw_name,
                           name=f"bulk {i}", partition="debug", state="PENDING", last_seen_at=now,
                           submit_time=now - timedelta(minutes=[3, 5, 1, 4, 2][i]))
    seen, cursor = [], None
    while True:
        url = f"{api.jobs_url}?name=bulk&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = api.client.get(url, **bearer(api.bob_token)).json()
        seen += [j["job_id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ["900002", "900004", "900000", "900003", "900001"]
    assert api.client.get(f"{api.jobs_url}?limit=0", **bearer(api.bob_token)).status_code == 400
    assert api.client.get(f"{api.jobs_url}?cursor=!!", **bearer(api.bob_token)).status_code == 400
    # Members see their own jobs only and cannot ask for someone else's; admins can.
    assert api.client.get(f"{api.jobs_url}?user=someone", **bearer(api.bob_token)).status_code == 403
    admin_view = api.client.get(f"{api.jobs_url}?user={api.posix.pw_name}&name=bulk", **bearer(api.alice_token)).json()
    assert len(admin_view["items"]) == 5


@pytest.mark.parametrize("payload, field, message", [
    ({"script_path": "relative.sh"}, "script_path", "absolute"),
    ({"script_path": "/home/../etc/passwd"}, "script_path", "normalised"),
    ({"script_path": "/etc/passwd"}, "script_path", "inside"),
    ({"script_path": "/home/x.sh", "script": "#!/bin/sh\n"}, "script_path", "exactly one"),
    ({"script": "echo no shebang"}, "script", "interpreter"),
    ({"script": "#!/bin/sh\ntrue\n", "partition": "bad partition!"}, "partition", "not valid"),
    ({"script": "#!/bin/sh\ntrue\n", "environment": {"SBATCH_PARTITION": "batch"}}, "environment", "cannot be set"),
])
def test_bad_requests_are_400_with_a_message(api, payload, field, message):
    response = api.client.post(api.jobs_url, payload, content_type="application/json", **bearer(api.bob_token))
    assert response.status_code == 400
    body = response.json()
    assert body["field"] == field and message in body["detail"]


def test_missing_script_and_slurm_errors_are_400_in_slurms_words(api):
    missing = api.client.post(api.jobs_url, {"script_path": f"{api.posix.pw_dir}/missing.sh"},
                              content_type="application/json", **bearer(api.bob_token))
    assert missing.status_code == 400 and "missing.sh" in missing.json()["detail"]
    bad = api.client.post(api.jobs_url, {"script": "#!/bin/sh\ntrue\n", "partition": "nosuch"},
                          content_type="application/json", **bearer(api.bob_token))
    assert bad.status_code == 400 and "Invalid partition name specified" in bad.json()["detail"]


def test_another_users_job_cannot_be_cancelled(api):
    script = write_script(api.bob_account, "api-sleep.sh", "#!/bin/bash\nsleep 120\n")
    job = api.client.post(api.jobs_url, {"script_path": script, "time_limit": "5"}, content_type="application/json",
                          **bearer(api.bob_token)).json()
    url = f"{api.jobs_url}/{job['job_id']}"
    # alice (admin) sees it, but Slurm refuses her cancel: she is another POSIX user.
    refused = api.client.delete(url, **bearer(api.alice_token))
    assert refused.status_code == 403 and "Access/permission denied" in refused.json()["detail"]
    cancelled = api.client.delete(url, **bearer(api.bob_token))
    # The job as Slurm reports it right after scancel: a running job may still be COMPLETING.
    assert cancelled.status_code == 200 and cancelled.json()["state"] in ("CANCELLED", "COMPLETING")
    wait_for_state(api.hpc, job["job_id"], {"CANCELLED"})


def test_another_tenants_cluster_is_404(api):
    assert api.client.get(api.jobs_url, **bearer(api.charlie_token)).status_code == 404
    response = api.client.post(api.jobs_url, {"script": "#!/bin/sh\ntrue\n"}, content_type="application/json",
                               **bearer(api.charlie_token))
    assert response.status_code == 404 and response.json()["detail"] == "No such cluster."
    # A token is scoped to its tenant even for a user who belongs to more than one.
    assert [c["slug"] for c in api.client.get("/v1/clusters", **bearer(api.charlie_token)).json()] == ["hpc"]
    assert api.client.get(f"/v1/clusters/{api.other_hpc.pk}/jobs", **bearer(api.bob_token)).status_code == 404


def test_session_auth_needs_csrf_for_writes(api):
    client = Client(enforce_csrf_checks=True)
    client.force_login(api.bob)
    assert client.get("/v1/clusters").status_code == 200
    assert client.post(api.jobs_url, {"script": "#!/bin/sh\ntrue\n"}, content_type="application/json").status_code in (401, 403)


def test_openapi_document(api):
    response = api.client.get("/v1/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {"/v1/clusters", "/v1/clusters/{cluster_id}/partitions", "/v1/clusters/{cluster_id}/jobs", "/v1/clusters/{cluster_id}/jobs/{job_id}",
            "/v1/clusters/{cluster_id}/jobs/{job_id}/output"} <= set(paths)


def test_partitions(api):
    from jobs.services import refresh_partitions

    assert refresh_partitions(api.hpc) == 2
    partitions = api.client.get(f"/v1/clusters/{api.hpc.pk}/partitions", **bearer(api.bob_token)).json()
    assert [(p["name"], p["is_default"]) for p in partitions] == [("debug", True), ("batch", False)]
    assert partitions[0]["cpus_total"] >= 1 and partitions[0]["time_limit"] == 7200
    assert api.client.get(f"/v1/clusters/{api.hpc.pk}/partitions", **bearer(api.charlie_token)).status_code == 404


# --- auth status, error bodies and the OpenAPI document (issue 8 §7) ------------------------------
def _expired_and_revoked(api) -> list[str]:
    expired, expired_text = create_api_token(user=api.bob, tenant=api.acme, name="expired")
    ApiToken.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    revoked, revoked_text = create_api_token(user=api.bob, tenant=api.acme, name="revoked")
    revoke_api_token(revoked, actor=api.alice)
    return [expired_text, revoked_text]


@pytest.mark.parametrize("method", ["post", "delete"])
def test_writes_with_bad_or_no_credentials_are_401_not_a_csrf_403(api, method):
    url = api.jobs_url if method == "post" else f"{api.jobs_url}/1"
    client = Client(enforce_csrf_checks=True)
    headers = [{}, bearer("garbage"), bearer("ctk_nope_nope"), bearer("ctk_a\x00b_c")]
    headers += [bearer(text) for text in _expired_and_revoked(api)]
    for extra in headers:
        response = getattr(client, method)(url, {"script": "#!/bin/sh\ntrue\n"}, content_type="application/json", **extra)
        assert response.status_code == 401, (extra, response.content)
        assert response.json()["detail"].startswith("Not signed in") and response["WWW-Authenticate"].startswith("Bearer")
    # A request with a Bearer token is judged by the token alone, even from a signed-in browser.
    client.force_login(api.bob)
    response = getattr(client, method)(url, {"script": "#!/bin/sh\ntrue\n"}, content_type="application/json",
                                       **bearer("ctk_nope_nope"))
    assert response.status_code == 401, response.content


def test_a_signed_in_browser_is_still_csrf_checked(api):
    client = Client(enforce_csrf_checks=True)
    client.force_login(api.bob)
    refused = client.post(api.jobs_url, {"script": "#!/bin/sh\ntrue\n", "partition": "nosuch"}, content_type="application/json")
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    assert client.delete(f"{api.jobs_url}/1").status_code == 403
    client.get("/")  # sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    accepted = client.post(api.jobs_url, {"script": "#!/bin/sh\ntrue\n", "partition": "nosuch"},
                           content_type="application/json", HTTP_X_CSRFTOKEN=token)
    # Past the CSRF check and the session: Slurm's own refusal.
    assert accepted.status_code == 400 and "Invalid partition name specified" in accepted.json()["detail"]


@pytest.mark.parametrize("method, url, body, detail, field", [
    ("post", "/v1/clusters/{pk}/jobs", {"script": "#!/bin/sh\n", "nodes": "many"}, "nodes: Input should be a valid integer", "nodes"),
    ("post", "/v1/clusters/{pk}/jobs", {"script": "#!/bin/sh\n", "environment": {"A": 1}}, "environment.A: Input should be a valid string", "environment.A"),
    ("post", "/v1/clusters/{pk}/jobs", "[1, 2", "", None),
    ("get", "/v1/clusters/{pk}/jobs?limit=ten", None, "limit: Input should be a valid integer", "limit"),
    ("get", "/v1/clusters/{pk}/jobs?state=R%00", None, "state: Value error, must not contain NUL", "state"),
    ("get", "/v1/clusters/abc/jobs", None, "cluster_id: Input should be a valid integer", "cluster_id"),
    ("get", "/v1/clusters/{pk}/jobs/1/output?tail=x", None, "tail: Input should be a valid integer", "tail"),
])
def test_requests_that_do_not_fit_the_schema_are_400_with_one_detail_line(api, method, url, body, detail, field):
    url = url.format(pk=api.hpc.pk)
    kwargs = {"content_type": "application/json"} if method == "post" else {}
    response = getattr(api.client, method)(url, body, **kwargs, **bearer(api.bob_token)) if body is not None else \
        getattr(api.client, method)(url, **bearer(api.bob_token))
    assert response.status_code == 400, response.content
    assert isinstance(response.json()["detail"], str) and response.json()["detail"].startswith(detail)
    if field:
        assert response.json()["field"] == field


# Every status each operation answers, and the test that makes it answer so: this module
# (test_every_documented_status_is_answered) unless named.
EXPECTED_STATUSES = {
    ("get", "/v1/clusters"): {200, 401, 429},
    ("get", "/v1/clusters/{cluster_id}/partitions"): {200, 400, 401, 404, 429},
    ("post", "/v1/clusters/{cluster_id}/jobs"): {201, 400, 401, 403, 404, 413, 429, 502, 503},
    ("get", "/v1/clusters/{cluster_id}/jobs"): {200, 400, 401, 403, 404, 429},
    ("get", "/v1/clusters/{cluster_id}/jobs/{job_id}"): {200, 400, 401, 404, 429},
    ("delete", "/v1/clusters/{cluster_id}/jobs/{job_id}"): {200, 400, 401, 403, 404, 429, 502, 503},
    ("get", "/v1/clusters/{cluster_id}/jobs/{job_id}/output"): {200, 400, 401, 403, 404, 429, 502, 503},
}
ANSWERED_ELSEWHERE = {
    429: "tests/test_signin_throttle.py (bad tokens from one address or for one prefix; the same check for every operation)",
    413: "tests/test_ssm_executor.py::test_api_submit_of_an_inline_script_too_big_for_ssm_is_413",
    503: "tests/test_slurm_down.py (slurmctld stopped)",
}


def test_openapi_lists_every_status_with_the_error_schema(api):
    document = api.client.get("/v1/openapi.json").json()
    seen = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            seen[(method, path)] = {int(code) for code in responses}
            for code, response in responses.items():
                if int(code) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (method, path, code)
    assert seen == {**EXPECTED_STATUSES, **AUDIT_STATUSES}  # the audit operations: tests/test_audit_api.py
    error = document["components"]["schemas"]["ErrorOut"]
    assert error["required"] == ["detail"] and set(error["properties"]) == {"detail", "field"}


def test_every_documented_status_is_answered(api, posix_user):
    """Each (operation, status) of EXPECTED_STATUSES, made to happen for real (except ANSWERED_ELSEWHERE)."""
    from clusters.services import map_account

    c = api
    tok = bearer(c.bob_token)
    script = write_script(c.bob_account, "api-status.sh", "#!/bin/bash\nsleep 120\n")
    job = c.client.post(c.jobs_url, {"script_path": script, "time_limit": "5"}, content_type="application/json", **tok)
    job_url = f"{c.jobs_url}/{job.json()['job_id']}"
    csrf_client = Client(enforce_csrf_checks=True)
    csrf_client.force_login(c.bob)
    _, rita_token = create_api_token(user=c.rita, tenant=c.acme, name="test")  # her account is revoked
    for job_id, owner in (("4242424", c.hpc.accounts.get(user=c.rita)), ("4242425", c.bob_account)):  # unknown to Slurm
        Job.objects.create(cluster=c.hpc, job_id=job_id, owner=owner, posix_user=c.posix.pw_name, state="COMPLETED",
                           last_seen_at=timezone.now())
    wait_for_state(c.hpc, job.json()["job_id"], {"RUNNING"})  # its output file exists from now on
    cases = {
        ("get", "/v1/clusters"): {200: lambda: c.client.get("/v1/clusters", **tok), 401: lambda: c.client.get("/v1/clusters")},
        ("get", "/v1/clusters/{cluster_id}/partitions"): {
            200: lambda: c.client.get(f"/v1/clusters/{c.hpc.pk}/partitions", **tok),
            400: lambda: c.client.get("/v1/clusters/x/partitions", **tok),
            401: lambda: c.client.get(f"/v1/clusters/{c.hpc.pk}/partitions"),
            404: lambda: c.client.get(f"/v1/clusters/{c.other_hpc.pk}/partitions", **tok)},
        ("post", "/v1/clusters/{cluster_id}/jobs"): {
            201: lambda: job,
            400: lambda: c.client.post(c.jobs_url, {"script": "no shebang"}, content_type="application/json", **tok),
            401: lambda: c.client.post(c.jobs_url, {"script": "#!/bin/sh\n"}, content_type="application/json"),
            403: lambda: csrf_client.post(c.jobs_url, {"script": "#!/bin/sh\n"}, content_type="application/json"),
            404: lambda: c.client.post(f"/v1/clusters/{c.other_hpc.pk}/jobs", {}, content_type="application/json", **tok)},
        ("get", "/v1/clusters/{cluster_id}/jobs"): {
            200: lambda: c.client.get(c.jobs_url, **tok),
            400: lambda: c.client.get(f"{c.jobs_url}?limit=0", **tok),
            401: lambda: c.client.get(c.jobs_url),
            403: lambda: c.client.get(f"{c.jobs_url}?user=root", **tok),
            404: lambda: c.client.get(f"/v1/clusters/{c.other_hpc.pk}/jobs", **tok)},
        ("get", "/v1/clusters/{cluster_id}/jobs/{job_id}"): {
            200: lambda: c.client.get(job_url, **tok),
            400: lambda: c.client.get("/v1/clusters/x/jobs/1", **tok),
            401: lambda: c.client.get(job_url),
            404: lambda: c.client.get(f"{c.jobs_url}/1%00", **tok)},
        ("get", "/v1/clusters/{cluster_id}/jobs/{job_id}/output"): {
            200: lambda: c.client.get(f"{job_url}/output", **tok),
            400: lambda: c.client.get(f"{job_url}/output?tail=0", **tok),
            401: lambda: c.client.get(f"{job_url}/output"),
            403: lambda: c.client.get(f"{c.jobs_url}/4242424/output", **bearer(rita_token)),
            404: lambda: c.client.get(f"{c.jobs_url}/99999999/output", **tok)},
        ("delete", "/v1/clusters/{cluster_id}/jobs/{job_id}"): {
            401: lambda: c.client.delete(job_url),
            403: lambda: csrf_client.delete(job_url),
            404: lambda: c.client.delete(f"{c.jobs_url}/99999999", **tok),
            400: lambda: c.client.delete("/v1/clusters/x/jobs/1", **tok),
            200: lambda: c.client.delete(job_url, **tok)},
    }
    for operation, by_status in cases.items():
        for status, make in by_status.items():
            response = make()
            assert response.status_code == status, (operation, status, response.content)
            if status >= 400:
                assert set(response.json()) <= {"detail", "field"}
    # 502: the executor cannot run the command at all (the mapped POSIX user does not exist on the head node).
    map_account(cluster=c.hpc, user=c.bob, posix_username="clusterra-nosuch", uid=4243)
    unrunnable = {
        ("post", "/v1/clusters/{cluster_id}/jobs"): c.client.post(c.jobs_url, {"script": "#!/bin/sh\n"}, content_type="application/json", **tok),
        ("delete", "/v1/clusters/{cluster_id}/jobs/{job_id}"): c.client.delete(f"{c.jobs_url}/4242425", **tok),
        ("get", "/v1/clusters/{cluster_id}/jobs/{job_id}/output"): c.client.get(f"{job_url}/output", **tok),
    }
    for operation, response in unrunnable.items():
        assert response.status_code == 502, (operation, response.content)
    answered = {(op, s) for op, by_status in cases.items() for s in by_status} | {(op, 502) for op in unrunnable}
    expected = {(op, s) for op, statuses in EXPECTED_STATUSES.items() for s in statuses if s not in ANSWERED_ELSEWHERE}
    assert answered == expected
