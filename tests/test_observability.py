"""Health, metrics and logs (issue 8 §5): /healthz, /readyz, /metrics, JSON logs with context and no secrets."""

import io
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from django.test import AsyncClient, Client
from prometheus_client.parser import text_string_to_metric_families

from accounts.services import create_api_token
from clusterra import logcontext, ops
from tests.conftest import BASE_DIR, _database_url, _free_port, run_daphne, stop_process

SENSITIVE_WORDS = ("127.0.0.1", "6379", "redis", "error", "refused", "exception", "traceback", "postgres", "version")


def _assert_nothing_revealed(body: bytes) -> None:
    text = body.decode().lower()
    for word in SENSITIVE_WORDS:
        assert word not in text, (word, text)


def _redis_layer(port: int) -> dict:
    return {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [f"redis://127.0.0.1:{port}/13"]}}}


# --- /healthz and /readyz ------------------------------------------------------------------------
@pytest.mark.django_db
async def test_healthz_and_readyz_answer_ok_for_any_host_without_sign_in(settings):
    settings.RECORDINGS_DIR.mkdir(parents=True)
    client = AsyncClient()
    for layers in (settings.CHANNEL_LAYERS, _redis_layer(6379)):  # the in-memory layer, then the real Redis
        settings.CHANNEL_LAYERS = layers
        for path in ("/healthz", "/readyz"):
            # a probe addresses the pod or process directly: a Host the portal does not serve
            response = await client.get(path, headers={"host": "10.1.2.3:8000"})
            assert response.status_code == 200, (path, response.content)
            assert json.loads(response.content) == {"status": "ok"}
            assert response["Cache-Control"] == "no-store" and "Set-Cookie" not in response
    assert (await client.post("/readyz")).status_code == 405
    assert (await client.head("/healthz")).status_code == 200


@pytest.mark.django_db
async def test_readyz_names_the_channel_layer_when_redis_is_unreachable_or_hangs(settings):
    settings.RECORDINGS_DIR.mkdir(parents=True)
    client = AsyncClient()
    settings.CHANNEL_LAYERS = _redis_layer(_free_port())  # nothing listens there
    started = time.monotonic()
    response = await client.get("/readyz")
    assert time.monotonic() - started < ops.READY_CHECK_TIMEOUT + 1
    assert response.status_code == 503
    assert json.loads(response.content) == {"status": "unavailable", "failed": ["channel_layer"]}
    _assert_nothing_revealed(response.content)
    assert (await client.get("/healthz")).status_code == 200  # liveness has no dependencies

    # A Redis that accepts the connection and never answers: the probe still answers within the bound.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        settings.CHANNEL_LAYERS = _redis_layer(silent.getsockname()[1])
        started = time.monotonic()
        response = await client.get("/readyz")
        elapsed = time.monotonic() - started
    assert response.status_code == 503 and json.loads(response.content)["failed"] == ["channel_layer"]
    assert ops.READY_CHECK_TIMEOUT - 0.2 < elapsed < ops.READY_CHECK_TIMEOUT + 1.5, elapsed


def _make_unwritable(path: Path) -> callable:
    """A directory nobody may create files in, root included; returns the undo."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        path.chmod(stat.S_IRUSR | stat.S_IXUSR)
        return lambda: path.chmod(0o700)
    # root ignores permission bits: the immutable attribute stops it too
    result = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, f"chattr +i failed (needs e2fsprogs and CAP_LINUX_IMMUTABLE): {result.stderr}"
    return lambda: subprocess.run(["chattr", "-i", str(path)], check=True, timeout=10)


@pytest.mark.django_db
async def test_readyz_names_the_recording_store_when_it_is_missing_or_not_writable(settings, tmp_path):
    client = AsyncClient()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    settings.RECORDINGS_DIR = blocker / "recordings"  # cannot exist
    response = await client.get("/readyz")
    assert response.status_code == 503 and json.loads(response.content) == {"status": "unavailable", "failed": ["recordings"]}
    _assert_nothing_revealed(response.content)

    settings.RECORDINGS_DIR = tmp_path / "read-only"
    undo = _make_unwritable(settings.RECORDINGS_DIR)
    try:
        response = await client.get("/readyz")
    finally:
        undo()
    assert response.status_code == 503 and json.loads(response.content)["failed"] == ["recordings"]
    assert list(settings.RECORDINGS_DIR.iterdir()) == []
    assert (await client.get("/readyz")).status_code == 200  # writable again: ready again
    assert list(settings.RECORDINGS_DIR.iterdir()) == []  # the probe file is gone


# --- /metrics access -----------------------------------------------------------------------------
def test_metrics_needs_an_allowed_direct_address_or_the_token(settings):
    client = Client()
    response = client.get("/metrics", HTTP_HOST="127.0.0.1:8001")  # loopback, the default allowed network
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    names = {family.name for family in text_string_to_metric_families(response.content.decode())}
    assert {"clusterra_terminal_sessions_live", "clusterra_celery_tasks", "clusterra_aws_errors"} <= names
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 403
    # through a proxy the address is the proxy's (or a client-supplied X-Forwarded-For): not trusted
    assert client.get("/metrics", HTTP_X_FORWARDED_FOR="127.0.0.1").status_code == 403
    assert client.post("/metrics").status_code == 405
    assert client.get("/metrics", REMOTE_ADDR="").status_code == 200  # daphne on a unix socket: a local peer

    settings.METRICS_TOKEN = "metrics-" + uuid.uuid4().hex
    settings.METRICS_ALLOWED_NETWORKS = []
    assert client.get("/metrics").status_code == 401  # loopback no longer enough
    assert client.get("/metrics", REMOTE_ADDR="").status_code == 401
    response = client.get("/metrics", REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION="Bearer wrong-token-of-some-length")
    assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Bearer")
    response = client.get("/metrics", REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION=f"Bearer {settings.METRICS_TOKEN}")
    assert response.status_code == 200 and b"clusterra_jobs_poll_duration_seconds" in response.content


def test_aws_errors_are_counted_by_code():
    from botocore.exceptions import ClientError

    from clusterra import metrics
    from clusters import aws

    def value():
        return metrics.AWS_ERRORS.labels(code="ExpiredTokenException")._value.get()

    before = value()
    aws.describe_client_error(ClientError({"Error": {"Code": "ExpiredTokenException", "Message": "x"}}, "StartSession"), "StartSession")
    assert value() == before + 1


# --- logs ----------------------------------------------------------------------------------------
def _json_handler() -> tuple[logging.Handler, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logcontext.JsonFormatter())
    handler.addFilter(logcontext.ContextFilter())
    handler.addFilter(logcontext.RedactFilter())
    return handler, stream


def test_json_lines_carry_the_context_and_never_a_secret():
    api_token = "ctk_0123456789ab_" + "S3cr3t-" * 6
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ0ZW5hbnQtMS11c2VyLTIifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    handler, stream = _json_handler()
    log = logging.getLogger("clusterra.test.redaction")
    other = logging.StreamHandler(io.StringIO())  # formats (and caches the traceback text) before ours
    other.setFormatter(logging.Formatter())
    plain_stream = io.StringIO()
    plain = logging.StreamHandler(plain_stream)  # the demo's format, with the same filters
    plain.setFormatter(logcontext.PlainFormatter("%(levelname)s %(message)s%(context)s"))
    plain.addFilter(logcontext.ContextFilter())
    plain.addFilter(logcontext.RedactFilter())
    log.addHandler(other)
    log.addHandler(handler)
    log.addHandler(plain)
    log.propagate = False
    try:
        with logcontext.bound(request_id="rid-1", session_id="sess-9"):
            log.warning("header Authorization: Bearer %s, pasted %s, callback /cb?code=%s&state=%s, id_token=%s",
                        api_token, api_token, "oidc-code-123", "oidc-state-456", jwt,
                        extra={"password": "hunter2hunter2", "headers": {"Cookie": "sessionid=abc123"},
                               "ssm": {"SessionId": "s-1", "TokenValue": "tv-secret", "StreamUrl": "wss://x?sig=1"}})
            try:
                raise RuntimeError(f"AWS said: secret_access_key={'k' * 20} token {api_token}")
            except RuntimeError:
                log.exception("failed")
        log.info("outside")
    finally:
        for h in (other, handler, plain):
            log.removeHandler(h)
    text = stream.getvalue()
    for secret in (api_token, "S3cr3t", jwt, "oidc-code-123", "oidc-state-456", "hunter2", "abc123", "tv-secret",
                   "sig=1", "k" * 20):
        assert secret not in text, secret
        assert secret not in plain_stream.getvalue(), secret
    assert "[request_id=rid-1 session_id=sess-9]" in plain_stream.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    first, failed, outside = lines
    assert first["request_id"] == "rid-1" and first["session_id"] == "sess-9" and first["level"] == "WARNING"
    assert "ctk_0123456789ab_[REDACTED]" in first["message"] and first["ssm"]["SessionId"] == "s-1"
    assert failed["request_id"] == "rid-1" and "RuntimeError" in failed["exc_info"]
    assert "request_id" not in outside and outside["message"] == "outside"


@pytest.mark.django_db
def test_request_id_is_generated_unless_the_proxy_is_trusted(settings):
    client = Client()
    first = client.get("/accounts/login/", HTTP_X_REQUEST_ID="from-the-client")
    assert first["X-Request-ID"] != "from-the-client" and len(first["X-Request-ID"]) == 32
    assert client.get("/accounts/login/")["X-Request-ID"] != first["X-Request-ID"]
    settings.TRUST_REQUEST_ID = True
    assert client.get("/accounts/login/", HTTP_X_REQUEST_ID="nginx-0123abcd")["X-Request-ID"] == "nginx-0123abcd"
    assert client.get("/accounts/login/", HTTP_X_REQUEST_ID="bad id\n")["X-Request-ID"] != "bad id\n"


def _json_log_lines(path: Path) -> list[dict]:
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))  # every log line is one JSON object
    return lines


@pytest.mark.slow
def test_daphne_json_logs_have_request_context_and_no_token_or_password(cast, transactional_db, tmp_path, settings):
    _row, token = create_api_token(user=cast.bob, tenant=cast.acme, name="log test")
    with run_daphne(tmp_path, settings, {"CLUSTERRA_LOG_FORMAT": "json"}) as url:
        http = requests.Session()
        missing = http.get(f"{url}/v1/clusters/999999/jobs", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert missing.status_code == 404
        bad_token = token[:-4] + "AAAA"
        assert http.get(f"{url}/v1/clusters", headers={"Authorization": f"Bearer {bad_token}"}, timeout=10).status_code == 401
        http.get(f"{url}/accounts/login/", timeout=10)
        wrong_password = "Wr0ng-" + uuid.uuid4().hex
        failed = http.post(f"{url}/accounts/login/", timeout=10, headers={"Referer": f"{url}/accounts/login/"},
                           data={"username": cast.alice.email, "password": wrong_password,
                                 "csrfmiddlewaretoken": http.cookies["csrftoken"]})
        assert failed.status_code == 200  # the form again
        deadline = time.monotonic() + 10
        while True:
            lines = _json_log_lines(url.log_path)
            by_request = {line.get("request_id"): line for line in lines}
            if {missing.headers["X-Request-ID"], failed.headers["X-Request-ID"]} <= set(by_request):
                break
            assert time.monotonic() < deadline, url.log_path.read_text()
            time.sleep(0.1)
    text = url.log_path.read_text()
    for secret in (token, token.split("_", 2)[2], bad_token.split("_", 2)[2], wrong_password, http.cookies["csrftoken"]):
        assert secret not in text, secret
    not_found = by_request[missing.headers["X-Request-ID"]]
    assert not_found["logger"] == "django.request" and not_found["status_code"] == 404
    assert not_found["user_id"] == cast.bob.pk and not_found["tenant"] == "acme"
    assert not_found["request"] == "GET /v1/clusters/999999/jobs"
    sign_in = by_request[failed.headers["X-Request-ID"]]
    assert sign_in["logger"] == "clusterra.auth" and sign_in["message"].startswith("sign-in failed")
    assert "user_id" not in sign_in and cast.alice.email not in text


# --- several processes: aggregated metrics and Celery outcomes --------------------------------------
def _sample(url: str, name: str, **labels) -> float | None:
    for family in text_string_to_metric_families(requests.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


@pytest.mark.slow
def test_metrics_of_celery_worker_and_daphne_aggregate_and_request_id_reaches_the_task(transactional_db, tmp_path, settings):
    from celery import Celery

    multiproc = tmp_path / "prometheus"
    queue = f"clusterra-obs-{uuid.uuid4().hex[:8]}"
    broker = "redis://127.0.0.1:6379/13"
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "CLUSTERRA_DATABASE_URL": _database_url(),
        "CLUSTERRA_DATA_DIR": str(tmp_path / "worker-data"),
        "CLUSTERRA_SECRET_KEY": settings.SECRET_KEY,
        "CLUSTERRA_CELERY_BROKER_URL": broker,
        "CLUSTERRA_LOG_FORMAT": "json",
    }
    worker_log = tmp_path / "celery.log"
    # Not the current app: it would stay current in this thread for the tests that follow, and their patches of
    # shared tasks (resolved through the current app) would miss the tasks other threads call.
    sender = Celery(broker=broker, set_as_current=False)
    with run_daphne(tmp_path, settings, {"PROMETHEUS_MULTIPROC_DIR": str(multiproc)}) as url:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "clusterra", "worker", "--pool=solo", "-Q", queue, "--without-mingle",
             "--without-gossip", "--without-heartbeat"],
            cwd=BASE_DIR, env=env, stdout=open(worker_log, "w"), stderr=subprocess.STDOUT,
        )
        try:
            with logcontext.bound(request_id="obs-rid-42"):
                sender.send_task("jobs.tasks.poll_cluster", args=[0], queue=queue)  # no such cluster: success
            sender.send_task("jobs.tasks.poll_cluster", args=["not-a-number"], queue=queue)  # raises: failure

            def outcomes() -> dict:
                body = requests.get(f"{url}/metrics", timeout=10).text
                found = {}
                for family in text_string_to_metric_families(body):
                    for sample in family.samples:
                        if sample.name == "clusterra_celery_tasks_total":
                            found[(sample.labels["task"], sample.labels["state"])] = sample.value
                return found

            deadline = time.monotonic() + 60
            while outcomes() != {("jobs.tasks.poll_cluster", "success"): 1.0, ("jobs.tasks.poll_cluster", "failure"): 1.0}:
                assert worker.poll() is None, worker_log.read_text()[-3000:]
                assert time.monotonic() < deadline, (outcomes(), worker_log.read_text()[-3000:])
                time.sleep(0.3)
            # the values live in the worker's files; daphne (another process) serves them
            assert any(name.startswith("counter_") for name in os.listdir(multiproc))

            # A process holding a live session is SIGKILLed: its session stops counting at the next scrape.
            holder = subprocess.Popen(
                [sys.executable, "-c", "import sys, time; from clusterra import metrics; "
                 "metrics.TERMINAL_SESSIONS_LIVE.labels(backend='local').inc(); print('ready', flush=True); time.sleep(600)"],
                cwd=BASE_DIR, env=env, stdout=subprocess.PIPE, text=True,
            )
            try:
                assert holder.stdout.readline().strip() == "ready"
                assert _sample(url, "clusterra_terminal_sessions_live", backend="local") == 1.0
            finally:
                holder.kill()
                holder.wait(10)
            assert _sample(url, "clusterra_terminal_sessions_live", backend="local") in (None, 0.0)
        finally:
            stop_process(worker, timeout=20)
            sender.close()
    lines = _json_log_lines(worker_log)
    carried = [line for line in lines if line.get("request_id") == "obs-rid-42"]
    assert carried and all(line["task"] == "jobs.tasks.poll_cluster" and line["task_id"] for line in carried), lines
    assert any(line.get("task") == "jobs.tasks.poll_cluster" and line["level"] == "ERROR" and "request_id" not in line
               for line in lines), lines


@pytest.mark.slow
def test_readyz_of_a_daphne_whose_database_is_down(transactional_db, tmp_path, settings):
    dead = f"postgres://postgres@127.0.0.1:{_free_port()}/nothing"
    with run_daphne(tmp_path, settings, {"CLUSTERRA_DATABASE_URL": dead}) as url:
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
        started = time.monotonic()
        response = requests.get(f"{url}/readyz", timeout=10)
        assert time.monotonic() - started < ops.READY_CHECK_TIMEOUT + 1.5
        assert response.status_code == 503 and response.json() == {"status": "unavailable", "failed": ["database"]}
        _assert_nothing_revealed(response.content)
    assert "readiness check database failed" in url.log_path.read_text()
