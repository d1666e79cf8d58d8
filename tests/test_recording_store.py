"""Recording storage (terminal/recordings.py): the filesystem and S3 stores, the spool in front of them, the
Celery tasks that hand spooled recordings over, retention, and an S3 outage during 20 real session ends.

S3 is moto. For the outage, the store's endpoint is a local port nobody listens on (connections are refused,
as for an S3 endpoint that is down or unreachable); "S3 is back" is moto answering at that same endpoint
(MOTO_S3_CUSTOM_ENDPOINTS), with the bucket it had before.
"""

import asyncio
import io
import json
import os
import socket
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from channels.db import database_sync_to_async
from django.db import connection
from django.utils import timezone
from moto import mock_aws
from prometheus_client import REGISTRY

from accounts.models import Tenant
from audit.models import AuditEvent
from audit.search import SessionFilter, search
from clusterra import ops
from terminal import recordings, tasks
from terminal.actions import attach_backend_session, finish_terminal_session, open_terminal_session
from terminal.models import SessionLog, TerminalSession
from terminal.recording import AsciicastRecorder
from terminal.recordings import BadPath, FileSystemStore, S3Store, StoreError, check_path, open_recording
from tests.conftest import wait_for
from tests.terminal_client import TerminalClient, settle_sessions, terminal_path

REGION = "us-east-1"
BUCKET = "clusterra-recordings-test"
PREFIX = "recordings/"
LOGIN_SHELL = "/bin/bash"  # the SHELL the recording names
State, IndexState = SessionLog.State, SessionLog.IndexState

BAD_PATHS = ["", "/etc/passwd", "../escape.cast", "acme/../../escape.cast", "acme/./x.cast", "acme//x.cast", "acme/x.cast/",
             "acme/\x00.cast", "acme\\..\\x.cast", "a" * 501, "acme/\n.cast"]


@pytest.fixture(autouse=True)
def _fresh_stores():
    recordings._stores.clear()
    yield
    recordings._stores.clear()


@pytest.fixture
def aws_env(monkeypatch):
    """Credentials for the default chain (moto accepts any); nothing from ~/.aws."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
                        "AWS_SESSION_TOKEN": "testing-session-token", "AWS_DEFAULT_REGION": REGION,
                        "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def use_s3(settings, *, endpoint_url="", sse="AES256", kms_key_id=""):
    settings.RECORDINGS_STORE = "s3"
    settings.RECORDINGS_S3_BUCKET = BUCKET
    settings.RECORDINGS_S3_PREFIX = PREFIX
    settings.RECORDINGS_S3_REGION = REGION
    settings.RECORDINGS_S3_ENDPOINT_URL = endpoint_url
    settings.RECORDINGS_S3_SSE = sse
    settings.RECORDINGS_S3_KMS_KEY_ID = kms_key_id


@pytest.fixture
def s3(settings, aws_env):
    """moto's S3 with the recordings bucket; the portal's store configured for it (SSE AES256)."""
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=BUCKET)
        use_s3(settings)
        yield client


class Outage:
    """S3 at an endpoint of its own: down() makes it refuse connections, up() brings it back (with its data)."""

    def __init__(self, monkeypatch, endpoint: str):
        self.monkeypatch, self.endpoint = monkeypatch, endpoint

    def down(self):
        self.monkeypatch.delenv("MOTO_S3_CUSTOM_ENDPOINTS", raising=False)

    def up(self):
        self.monkeypatch.setenv("MOTO_S3_CUSTOM_ENDPOINTS", self.endpoint)


@pytest.fixture
def s3_outage(settings, aws_env, monkeypatch):
    with socket.socket() as reserved, mock_aws():
        reserved.bind(("127.0.0.1", 0))  # bound and never listening: connections to it are refused
        outage = Outage(monkeypatch, f"http://127.0.0.1:{reserved.getsockname()[1]}")
        outage.up()
        client = boto3.client("s3", region_name=REGION, endpoint_url=outage.endpoint)
        client.create_bucket(Bucket=BUCKET)
        use_s3(settings, endpoint_url=outage.endpoint)
        outage.client = client
        yield outage


def found(tenant, text: str) -> set[str]:
    """The sessions whose indexed logs show `text` (audit/search.py, as a tenant admin searches)."""
    return {str(hit.session_id) for hit in search(text, SessionFilter(tenant_id=tenant.pk), limit=500).hits}


def files_under(root: Path) -> list[Path]:
    return [Path(d) / f for d, _, names in os.walk(root) for f in names] if root.exists() else []


# --- paths ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", BAD_PATHS)
def test_bad_paths_are_refused_everywhere(path, tmp_path, settings):
    store = FileSystemStore(tmp_path / "store")
    s3_store = S3Store(bucket=BUCKET, prefix=PREFIX, region=REGION)
    with pytest.raises(BadPath):
        check_path(path)
    for call in (lambda: store.save(path, io.BytesIO(b"x")), lambda: store.open(path), lambda: store.size(path),
                 lambda: store.exists(path), lambda: store.delete(path), lambda: s3_store.key(path),
                 lambda: recordings.spool_path(path), lambda: recordings.create_spool_file(path)):
        with pytest.raises(BadPath):
            call()
    assert files_under(tmp_path) == [] and not (tmp_path.parent / "escape.cast").exists()


def test_good_paths():
    assert check_path("acme/2026/12/0b7c.cast") == "acme/2026/12/0b7c.cast"
    assert check_path("acme/2026/12/0b7c.ssm.log") == "acme/2026/12/0b7c.ssm.log"
    assert check_path("x..y/..z") == "x..y/..z"  # dots inside a name are fine


# --- the filesystem store ---------------------------------------------------------------------------------
def test_filesystem_store_round_trip(tmp_path):
    root = tmp_path / "store"
    store = FileSystemStore(root)
    path = "acme/2026/12/one.cast"
    assert not store.exists(path)
    with pytest.raises(FileNotFoundError):
        store.open(path)
    store.save(path, io.BytesIO(b'{"version": 2}\n[0.1, "o", "hi"]\n'))
    assert store.exists(path) and store.size(path) == 32
    with store.open(path) as handle:
        assert handle.readline() == b'{"version": 2}\n' and handle.read() == b'[0.1, "o", "hi"]\n'
    assert stat.S_IMODE((root / path).stat().st_mode) == 0o600
    for directory in (root, root / "acme", root / "acme/2026", root / "acme/2026/12"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    store.save(path, io.BytesIO(b"replaced"))  # whole, atomically
    assert store.size(path) == 8 and files_under(root) == [root / path]  # no temporary file left
    store.delete(path)
    store.delete(path)  # nothing there: no error
    assert not store.exists(path)
    store.healthcheck()
    with pytest.raises(OSError):
        FileSystemStore(tmp_path / "nowhere").healthcheck()


def test_filesystem_store_failure_is_a_store_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="Cannot write acme/x.cast"):
        FileSystemStore(blocker).save("acme/x.cast", io.BytesIO(b"x"))


def test_get_store_follows_the_settings(settings, aws_env):
    settings.RECORDINGS_STORE = "filesystem"
    store = recordings.get_store()
    assert isinstance(store, FileSystemStore) and store.root == settings.RECORDINGS_DIR and store.critical
    assert recordings.get_store() is store
    use_s3(settings)
    s3_store = recordings.get_store()
    assert isinstance(s3_store, S3Store) and (s3_store.bucket, s3_store.prefix) == (BUCKET, PREFIX) and not s3_store.critical
    assert s3_store.key("acme/x.cast") == "recordings/acme/x.cast"
    settings.RECORDINGS_S3_SSE = "none"
    assert recordings.get_store() is not s3_store and recordings.get_store().extra_args == {}


# --- the S3 store -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("sse", ["AES256", "aws:kms", "none"])
def test_s3_store_round_trip_with_server_side_encryption(s3, settings, sse):
    kms_key = ""
    if sse == "aws:kms":
        kms_key = boto3.client("kms", region_name=REGION).create_key(Description="recordings")["KeyMetadata"]["Arn"]
    use_s3(settings, sse=sse, kms_key_id=kms_key)
    store = recordings.get_store()
    sent = []
    store.client.meta.events.register("before-parameter-build.s3.PutObject", lambda params, **kw: sent.append(dict(params)))
    path = "acme/2026/12/two.cast"
    body = b'{"version": 2, "width": 80}\n' + b'[0.5, "o", "line\\r\\n"]\n' * 100
    store.save(path, io.BytesIO(body))
    head = s3.head_object(Bucket=BUCKET, Key=f"{PREFIX}{path}")
    if sse == "none":
        assert "ServerSideEncryption" not in sent[0]
    else:
        assert sent[0]["ServerSideEncryption"] == sse and head["ServerSideEncryption"] == sse
    if sse == "aws:kms":
        assert sent[0]["SSEKMSKeyId"] == kms_key and head["SSEKMSKeyId"] == kms_key
    assert store.exists(path) and store.size(path) == len(body) == head["ContentLength"]
    with store.open(path) as handle:  # streamed: line by line, then the rest
        assert handle.readline() == b'{"version": 2, "width": 80}\n'
        assert handle.read() == body[len(b'{"version": 2, "width": 80}\n'):]
    store.healthcheck()
    store.delete(path)
    store.delete(path)
    assert not store.exists(path)
    with pytest.raises(FileNotFoundError):
        store.open(path)
    with pytest.raises(FileNotFoundError):
        store.size(path)


def test_s3_store_large_recordings_go_in_parts_with_the_same_encryption(s3, settings):
    use_s3(settings, sse="AES256")
    store = recordings.get_store()
    store.transfer = TransferConfig(multipart_threshold=5 * 1024**2, multipart_chunksize=5 * 1024**2, max_concurrency=2)
    body = os.urandom(11 * 1024**2 + 123)
    calls = []
    store.client.meta.events.register("before-parameter-build.s3.*", lambda params, model, **kw: calls.append(model.name))
    store.save("acme/big.cast", io.BytesIO(body))
    assert "CreateMultipartUpload" in calls and calls.count("UploadPart") == 3 and "PutObject" not in calls
    head = s3.head_object(Bucket=BUCKET, Key=f"{PREFIX}acme/big.cast")
    assert head["ServerSideEncryption"] == "AES256" and head["ContentLength"] == len(body)
    with store.open("acme/big.cast") as handle:
        assert handle.read() == body


def test_s3_store_failures_name_the_cause_and_no_secret(s3, settings, s3_outage_endpoint):
    settings.RECORDINGS_S3_BUCKET = "no-such-recordings-bucket"
    with pytest.raises(StoreError, match="NoSuchBucket"):
        recordings.get_store().save("acme/x.cast", io.BytesIO(b"x"))
    with pytest.raises(StoreError):
        recordings.get_store().healthcheck()
    use_s3(settings, endpoint_url=s3_outage_endpoint)
    store = recordings.get_store()
    with pytest.raises(StoreError) as failed:
        store.save("acme/x.cast", io.BytesIO(b"x"))
    assert "Could not connect" in str(failed.value) and s3_outage_endpoint in str(failed.value)
    started = timezone.now()
    with pytest.raises(StoreError):
        store.healthcheck()
    assert timezone.now() - started < timedelta(seconds=ops.READY_CHECK_TIMEOUT)
    assert "testing-secret-key" not in str(failed.value) and "testing-session-token" not in str(failed.value)


@pytest.fixture
def s3_outage_endpoint():
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{reserved.getsockname()[1]}"


# --- readiness --------------------------------------------------------------------------------------------
@pytest.mark.django_db
async def test_readyz_checks_the_spool_and_the_store(settings, tmp_path, s3_outage_endpoint, aws_env):
    settings.RECORDINGS_DIR.mkdir(parents=True)
    assert await ops._readiness() == ([], [])
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    settings.RECORDINGS_SPOOL_DIR = blocker / "spool"  # cannot exist: no terminal could record
    assert await ops._readiness() == (["recordings"], [])
    settings.RECORDINGS_SPOOL_DIR = tmp_path / "spool"
    # S3 unreachable: recordings wait in the spool; the process stays ready and says it is degraded.
    use_s3(settings, endpoint_url=s3_outage_endpoint)
    started = timezone.now()
    assert await ops._readiness() == ([], ["recording_store"])
    assert timezone.now() - started < timedelta(seconds=ops.READY_CHECK_TIMEOUT + 1)
    response = await ops._readyz()
    assert response.status_code == 200 and json.loads(response.content) == {"status": "ok", "degraded": ["recording_store"]}


# --- sessions: the recorder, the spool, the store -----------------------------------------------------------
def start_session(cast, user=None) -> TerminalSession:
    return open_terminal_session(user=user or cast.bob, tenant_slug="acme", cluster_slug="hpc", working_directory=None,
                                 client_address="127.0.0.1", user_agent="pytest")


def recorded_session(cast, text: str = "hello", *, user=None, started: bool = True) -> TerminalSession:
    """A session whose real recorder wrote `text` as output, ended."""
    session = start_session(cast, user)
    if started:
        attach_backend_session(session, "4242")
        recorder = AsciicastRecorder(session.recording_path, cols=80, rows=24, title="bob@hpc", shell=LOGIN_SHELL)
        recorder.output(f"$ echo {text}\r\n{text}\r\n$ ".encode())
        recorder.close()
    finish_terminal_session(session, reason="closed")
    return session


def asciicast(session) -> SessionLog:
    return SessionLog.objects.get(session=session, kind=SessionLog.Kind.ASCIICAST)


@pytest.mark.django_db
def test_a_recording_goes_through_the_spool_to_the_store(cast, settings, monkeypatch, django_capture_on_commit_callbacks):
    queued = []
    monkeypatch.setattr(tasks.store_session_logs, "delay", queued.append)
    session = start_session(cast)
    log = asciicast(session)
    assert (log.state, log.path, log.index_state) == (State.RECORDING, session.recording_path, IndexState.PENDING)
    recorder = AsciicastRecorder(session.recording_path, cols=80, rows=24, title="bob@hpc", shell=LOGIN_SHELL)
    recorder.output("$ echo gr\u00fc\u00df dich\r\ngr\u00fc\u00df dich\r\n".encode())
    spooled = settings.RECORDINGS_SPOOL_DIR / session.recording_path
    assert stat.S_IMODE(spooled.stat().st_mode) == 0o600 and stat.S_IMODE(spooled.parent.stat().st_mode) == 0o700
    with open_recording(session) as live:  # the session page can play it while it runs
        assert "grüß dich" in live.read().decode()
    recorder.close()
    recorded = spooled.read_bytes()
    with django_capture_on_commit_callbacks(execute=True):
        finish_terminal_session(session, reason="closed")
    wait_for(lambda: queued == [str(session.pk)], 5, "the store task to be queued")
    log.refresh_from_db()
    assert log.state == State.SPOOLED and log.retry_at <= timezone.now() and not settings.RECORDINGS_DIR.exists()

    assert tasks.store_session_logs(str(session.pk)) == 1  # what the worker runs
    log.refresh_from_db()
    assert (log.state, log.size, log.attempts, log.last_error, log.retry_at) == (State.STORED, len(recorded), 0, "", None)
    assert (settings.RECORDINGS_DIR / session.recording_path).read_bytes() == recorded
    assert files_under(settings.RECORDINGS_SPOOL_DIR) == []
    with open_recording(session) as stored:
        assert stored.read() == recorded
    assert log.index_state == IndexState.INDEXED and log.indexed_lines > 0 and log.indexed_at is not None
    assert found(cast.acme, "grüß dich") == {str(session.pk)}
    assert tasks.store_session_logs(str(session.pk)) == 0  # nothing due any more


@pytest.mark.django_db
def test_a_broker_outage_loses_nothing_the_sweep_stores_it(cast, settings, monkeypatch, django_capture_on_commit_callbacks,
                                                           caplog):
    def broker_down(session_id):
        raise ConnectionRefusedError("broker down")

    monkeypatch.setattr(tasks.store_session_logs, "delay", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        session = recorded_session(cast, "after-the-outage")
    wait_for(lambda: "the sweep will store them" in caplog.text, 5, "the failed publication to be logged")
    assert asciicast(session).state == State.SPOOLED
    assert tasks.sweep_session_logs() == 1
    assert asciicast(session).state == State.STORED
    assert b"after-the-outage" in (settings.RECORDINGS_DIR / session.recording_path).read_bytes()


@pytest.mark.django_db
def test_a_corrupt_spooled_file_is_stored_as_it_is(cast, settings):
    session = start_session(cast)
    attach_backend_session(session, "4242")
    junk = b'{"version": 2, "width": 80, "hei\n[0.1, "o", "rm -rf /fsx\\r\\n"]\n\xff\xfe\x00garbage\n[0.2, "o", "trunc'
    with recordings.create_spool_file(session.recording_path) as spool:
        spool.write(junk)
    finish_terminal_session(session, reason="worker_lost")
    recordings.sweep()
    log = asciicast(session)
    assert log.state == State.STORED and (settings.RECORDINGS_DIR / session.recording_path).read_bytes() == junk
    assert log.index_state == IndexState.PARTIAL and log.index_note, (log.index_state, log.index_note)
    assert found(cast.acme, "rm -rf /fsx") == {str(session.pk)}  # indexed as far as it goes


@pytest.mark.django_db
def test_a_recording_over_the_size_limit_is_stored_whole_and_flagged(cast, settings):
    settings.RECORDINGS_MAX_BYTES = 1024
    session = start_session(cast)
    attach_backend_session(session, "4242")
    recorder = AsciicastRecorder(session.recording_path, cols=80, rows=24, title="bob@hpc", shell=LOGIN_SHELL)
    recorder.output(b"$ echo first-line\r\nfirst-line\r\n")
    for i in range(100):
        recorder.output(f"line-{i} {'x' * 60}\r\n".encode())
    recorder.close()
    finish_terminal_session(session, reason="closed")
    recordings.sweep()
    log = asciicast(session)
    assert log.state == State.STORED and log.size > 6000
    assert (settings.RECORDINGS_DIR / session.recording_path).stat().st_size == log.size
    assert log.index_state == IndexState.PARTIAL and f"Only the first 1024 of {log.size} bytes" in log.index_note
    assert found(cast.acme, "echo first-line") == {str(session.pk)} and found(cast.acme, "line-99") == set()


@pytest.mark.django_db
def test_a_spooled_recording_that_is_gone_is_flagged_missing(cast, settings):
    lost = recorded_session(cast, "lost")
    (settings.RECORDINGS_SPOOL_DIR / lost.recording_path).unlink()
    never = recorded_session(cast, started=False)  # the shell did not start: nothing was recorded
    already = recorded_session(cast, "already")  # stored, and the worker died before it could say so
    with (settings.RECORDINGS_SPOOL_DIR / already.recording_path).open("rb") as handle:
        recordings.get_store().save(already.recording_path, handle)
    (settings.RECORDINGS_SPOOL_DIR / already.recording_path).unlink()
    recordings.sweep()
    assert (asciicast(lost).state, asciicast(lost).last_error) == (State.MISSING, "The spooled recording is gone.")
    assert asciicast(never).state == State.MISSING and "did not start" in asciicast(never).last_error
    assert asciicast(already).state == State.STORED
    events = AuditEvent.objects.filter(action="terminal.session.log_missing")
    assert [e.target_id for e in events] == [str(lost.pk)]  # an unstarted shell is no surprise
    with pytest.raises(recordings.RecordingUnavailable, match="missing"):
        open_recording(lost)


@pytest.mark.django_db(transaction=True)
def test_several_workers_store_each_recording_once(cast, settings, monkeypatch):
    sessions = [recorded_session(cast, f"w{i}") for i in range(10)]
    saves = []
    lock = threading.Lock()
    real_save = FileSystemStore.save

    def counted(self, relative_path, file):
        with lock:
            saves.append(relative_path)
        return real_save(self, relative_path, file)

    monkeypatch.setattr(FileSystemStore, "save", counted)
    run_concurrently([recordings.sweep] * 4 + [lambda s=s: recordings.store_session_logs(s.pk) for s in sessions])
    assert sorted(saves) == sorted(s.recording_path for s in sessions)
    assert set(SessionLog.objects.values_list("state", flat=True)) == {State.STORED}


def run_concurrently(functions) -> list:
    """Each function in a thread of its own (as Celery workers would), all at once."""
    barrier = threading.Barrier(len(functions))

    def run(fn):
        try:
            barrier.wait(10)
            return fn()
        finally:
            connection.close()

    with ThreadPoolExecutor(len(functions)) as pool:
        return [future.result() for future in [pool.submit(run, fn) for fn in functions]]


# --- an S3 outage during 20 concurrent session ends -----------------------------------------------------------
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
async def test_s3_down_during_20_concurrent_session_ends_loses_no_recording(cast, settings, s3_outage, monkeypatch):
    settings.TERMINAL_REATTACH_GRACE = 0
    queued = []
    monkeypatch.setattr(tasks.store_session_logs, "delay", queued.append)
    count = 20
    clients = []
    try:
        for _ in range(count):
            client = TerminalClient(cast.bob, terminal_path())
            assert await client.connect()
            await client.wait_for_status("connected")
            clients.append(client)
        await asyncio.gather(*(c.send_input(f"echo recorded-''{i}\n".encode()) for i, c in enumerate(clients)))
        await asyncio.gather(*(c.wait_for_output(f"recorded-{i}\r\n".encode(), timeout=30) for i, c in enumerate(clients)))
        session_ids = [c.statuses[0]["session_id"] for c in clients]
        s3_outage.down()
        # 20 ends at once: each shell exits, its recorder closes, its row is finished and its store task queued.
        await asyncio.gather(*(c.send_input(b"exit\n") for c in clients))
        await asyncio.gather(*(c.wait_closed(timeout=60) for c in clients))
    finally:
        await settle_sessions()
    # Each end's bookkeeping (the row, its audit event, the log's state) runs after the browser was told, through
    # Django's one thread for sync database calls: on two busy cores, 20 of them take a while.
    await asyncio.to_thread(wait_for, lambda: sorted(queued) == sorted(session_ids), 60, "20 store tasks to be queued")

    # The worker runs the 20 tasks side by side while S3 refuses every connection.
    stored = await database_sync_to_async(run_concurrently)(
        [lambda sid=sid: recordings.store_session_logs(sid) for sid in queued])
    assert stored == [0] * count

    def spooled():
        logs = list(SessionLog.objects.filter(session_id__in=session_ids, kind="asciicast").select_related("session"))
        return logs, {str(log.session_id): (settings.RECORDINGS_SPOOL_DIR / log.path).read_bytes() for log in logs}

    logs, recorded = await database_sync_to_async(spooled)()
    assert len(logs) == count
    for log in logs:
        assert log.state == State.SPOOLED and log.attempts == 1 and log.retry_at > timezone.now(), (log.state, log.attempts)
        assert f"Could not connect to the S3 endpoint {s3_outage.endpoint} for PutObject" in log.last_error, log.last_error
        assert "plays from the spool" in recordings.status_text(log)
        assert log.index_state == IndexState.INDEXED, (log.index_state, log.index_note)  # it did not wait for S3
    for i, session_id in enumerate(session_ids):
        lines = recorded[session_id].decode().splitlines()
        assert json.loads(lines[0])["version"] == 2
        assert f"recorded-{i}" in "".join(json.loads(line)[2] for line in lines[1:])
    assert await ops._readiness() == ([], ["recording_store"])  # degraded, still serving terminals

    # A sweep while S3 is still down: three failures in a row, then it leaves the rest to the next sweep.
    failed_before = REGISTRY.get_sample_value("clusterra_session_logs_total", {"kind": "asciicast", "outcome": "store_failed"})
    await database_sync_to_async(lambda: SessionLog.objects.filter(session_id__in=session_ids).update(
        retry_at=timezone.now()))()
    assert await database_sync_to_async(tasks.sweep_session_logs)() == 0
    attempts = await database_sync_to_async(lambda: sorted(
        SessionLog.objects.filter(session_id__in=session_ids).values_list("attempts", flat=True)))()
    assert attempts == [1] * (count - recordings.SWEEP_STORE_FAILURES) + [2] * recordings.SWEEP_STORE_FAILURES
    assert REGISTRY.get_sample_value("clusterra_session_logs_total", {"kind": "asciicast", "outcome": "store_failed"}) \
        == failed_before + recordings.SWEEP_STORE_FAILURES
    assert REGISTRY.get_sample_value("clusterra_session_logs_waiting", {"state": "spooled"}) == count

    # S3 is back; the retries are due (time travel: their backoff has passed); the beat sweep runs.
    s3_outage.up()
    listing = s3_outage.client.list_objects_v2(Bucket=BUCKET)
    assert listing["KeyCount"] == 0
    await database_sync_to_async(lambda: SessionLog.objects.filter(session_id__in=session_ids).update(
        retry_at=timezone.now()))()
    assert await database_sync_to_async(tasks.sweep_session_logs)() == count

    logs, _ = await database_sync_to_async(lambda: (list(SessionLog.objects.filter(session_id__in=session_ids)), None))()
    assert {log.state for log in logs} == {State.STORED} and all(log.last_error == "" for log in logs)
    for log in logs:
        obj = s3_outage.client.get_object(Bucket=BUCKET, Key=f"{PREFIX}{log.path}")
        assert obj["Body"].read() == recorded[str(log.session_id)] and obj["ServerSideEncryption"] == "AES256"
    assert files_under(settings.RECORDINGS_SPOOL_DIR) == []
    assert REGISTRY.get_sample_value("clusterra_session_logs_waiting", {"state": "spooled"}) == 0
    session = await database_sync_to_async(TerminalSession.objects.get)(pk=session_ids[0])
    with await database_sync_to_async(open_recording)(session) as handle:  # now read from S3
        assert handle.read() == recorded[str(session.pk)]


# --- retention --------------------------------------------------------------------------------------------
def ended_days_ago(session, days: int) -> None:
    TerminalSession.objects.filter(pk=session.pk).update(ended_at=timezone.now() - timedelta(days=days))


@pytest.mark.django_db
def test_retention_deletes_old_recordings_and_keeps_new_ones(cast, settings, tmp_path):
    Tenant.objects.filter(pk=cast.acme.pk).update(recording_retention_days=30)
    Tenant.objects.filter(pk=cast.other.pk).update(recording_retention_days=0)
    old = recorded_session(cast, "old-and-stored")
    old_spooled = recorded_session(cast, "old-and-spooled")
    new = recorded_session(cast, "new-one")
    recordings.store_session_logs(old.pk)
    recordings.store_session_logs(new.pk)
    forever = open_terminal_session(user=cast.charlie, tenant_slug="other", cluster_slug="hpc", working_directory=None,
                                    client_address=None, user_agent="")
    AsciicastRecorder(forever.recording_path, cols=80, rows=24, title="c", shell=LOGIN_SHELL).close()
    finish_terminal_session(forever, reason="closed")
    recordings.store_session_logs(forever.pk)
    stored_in = settings.RECORDINGS_DIR
    settings.RECORDINGS_DIR = tmp_path / "a-file" / "recordings"  # the store cannot take it: spooled, and indexed
    (tmp_path / "a-file").write_text("")
    recordings.store_session_logs(old_spooled.pk)
    settings.RECORDINGS_DIR = stored_in
    assert asciicast(old_spooled).state == State.SPOOLED and asciicast(old_spooled).retry_at > timezone.now()
    for session, days in ((old, 31), (old_spooled, 40), (new, 29), (forever, 4000)):
        ended_days_ago(session, days)
    assert found(cast.acme, "old-and") == {str(old.pk), str(old_spooled.pk)}

    assert recordings.expire_recordings() == 2
    assert (asciicast(old).state, asciicast(old_spooled).state) == (State.EXPIRED, State.EXPIRED)
    assert not (settings.RECORDINGS_DIR / old.recording_path).exists()
    assert not (settings.RECORDINGS_SPOOL_DIR / old_spooled.recording_path).exists()
    assert asciicast(new).state == State.STORED and (settings.RECORDINGS_DIR / new.recording_path).exists()
    assert asciicast(forever).state == State.STORED and (settings.RECORDINGS_DIR / forever.recording_path).exists()
    [event] = AuditEvent.objects.filter(action="recording.expire")
    assert event.tenant_id == cast.acme.pk
    assert event.data["sessions"] == 2 and event.data["logs"] == 2 and event.data["retention_days"] == 30
    with pytest.raises(recordings.RecordingUnavailable, match="retention"):
        open_recording(old)
    assert found(cast.acme, "old-and") == set() and found(cast.acme, "new-one") == {str(new.pk)}  # out of the index too
    assert asciicast(new).index_state == IndexState.INDEXED
    assert recordings.expire_recordings() == 0  # nothing more; no event for an idle run
    assert AuditEvent.objects.filter(action="recording.expire").count() == 1


@pytest.mark.django_db
def test_retention_is_part_of_the_tenant_policy(cast, client):
    assert Tenant.objects.get(pk=cast.acme.pk).recording_retention_days == 365
    client.force_login(cast.alice)  # the admin console
    assert "Keep session recordings (days)" in client.get("/t/acme/admin/identity/").content.decode()
    url = "/t/acme/admin/identity/policy/"
    policy = {"local_signin_enabled": "on", "uid_range_start": "20000", "uid_range_end": "59999", "offboard_kill_processes": "on"}
    assert client.post(url, {**policy, "recording_retention_days": "90"}).status_code == 302
    assert Tenant.objects.get(pk=cast.acme.pk).recording_retention_days == 90
    [event] = AuditEvent.objects.filter(action="tenant.policy.update")
    assert event.actor == cast.alice and event.data["changes"] == {"recording_retention_days": [365, 90]}
    assert client.post(url, policy).status_code == 302  # left out: unchanged
    assert client.post(url, {**policy, "recording_retention_days": "0"}).status_code == 302  # 0: kept forever
    assert Tenant.objects.get(pk=cast.acme.pk).recording_retention_days == 0
    assert client.post(url, {**policy, "recording_retention_days": "-1"}).status_code == 400
    assert Tenant.objects.get(pk=cast.acme.pk).recording_retention_days == 0
    assert Tenant.objects.get(pk=cast.other.pk).recording_retention_days == 365  # one tenant's policy only
