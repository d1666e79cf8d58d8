"""Recordings and session logs: the store they end up in, the local spool in front of it, and their bookkeeping.

- The store, `get_store()`: `FileSystemStore` (CLUSTERRA_RECORDINGS_DIR, the embedded default) or `S3Store`
  (a bucket and prefix, server-side encryption, the default AWS credential chain), behind one interface:
  save, open, exists, size, delete, healthcheck. Paths are relative (`acme/2026/12/<session>.cast`) and
  checked by `check_path`: no absolute paths, no `.` or `..` parts.
- The spool (CLUSTERRA_RECORDINGS_SPOOL_DIR, local persistent disk): the recorder writes there. When a
  session ends its file is handed to the store by a Celery task (`store_session_logs`) and stays in the
  spool until the store has it, so a store outage (S3 down, a full disk) delays it and loses nothing; a beat
  task (`sweep`) retries what is due with backoff, so a lost task or a broker outage loses nothing either.
  Meanwhile `open_log` reads it from the spool.
- SSM session logs: the agent writes `<s3_prefix>/<session id>.log` to the cluster's bucket when a session
  ends and, with a `cloudwatch_log_group`, streams the session's output into the log stream `<session id>`
  while it runs. Each is fetched with the cluster's auditor credentials (clusters/aws.py) into the spool (the
  stream as an asciicast recording: terminal/cloudwatch.py) and goes on the same way. Absent
  CLUSTERRA_SSM_LOG_LATE_SECONDS after the session ended it is flagged late, absent
  CLUSTERRA_SSM_LOG_MISSING_SECONDS missing, each with an audit event: never silently absent.
- Every log is indexed for search (audit/indexing.py) as soon as it is in the spool, without waiting for
  the store.
- Retention: `expire_recordings` deletes the logs of sessions that ended longer ago than their tenant's
  recording_retention_days, from the store, the spool and the index, with one audit event per tenant.

State lives in terminal.SessionLog. A worker claims a row before working on it (a conditional UPDATE of
claimed_until), so several workers never process the same log at once, and a worker that dies holding a
claim only delays the log by CLAIM. retry_at and index_retry_at say when a failed step is due again.
"""

import abc
import contextlib
import io
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from audit.services import record_event
from clusterra import metrics
from clusterra.files import private_dir
from clusters import aws
from terminal.models import SessionLog, TerminalSession

logger = logging.getLogger(__name__)

Kind, State, IndexState = SessionLog.Kind, SessionLog.State, SessionLog.IndexState
MAX_PATH = 500  # SessionLog.path
CHUNK = 1024 * 1024
# Backoff between tries to store or fetch a log (and to index it again): 15 s, 30 s, 1 min, … up to 10 min.
RETRY_FIRST = timedelta(seconds=15)
RETRY_MAX = timedelta(minutes=10)
# A log being worked on is held this long; if the worker dies, the sweep takes it over afterwards.
CLAIM = timedelta(minutes=15)
INDEX_MAX_ATTEMPTS = 5
# A sweep stops trying the store after this many failures in a row (it is down: the rest waits for the next sweep).
SWEEP_STORE_FAILURES = 3
EXPIRE_BATCH = 1000
_SSM_SESSION_ID = re.compile(r"^[\w+=,.@-]{1,128}$", re.ASCII)
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


class BadPath(ValueError):
    """A recording path that is not a plain relative path."""


class StoreError(Exception):
    """The store failed (unreachable, refused, full). str() names the cause and never holds a secret."""


class RecordingUnavailable(Exception):
    """A log cannot be read; the message says why and is fit for the page."""


def check_path(relative_path: str) -> str:
    """`relative_path` if it is a plain relative path (no absolute path, no empty, `.` or `..` part); BadPath otherwise."""
    if not isinstance(relative_path, str) or not 0 < len(relative_path) <= MAX_PATH:
        raise BadPath(f"A recording path must be 1 to {MAX_PATH} characters.")
    if any(ord(c) < 32 or c in "\\\x7f" for c in relative_path):
        raise BadPath("A recording path must not hold control characters or backslashes.")
    if relative_path.startswith("/"):
        raise BadPath(f"A recording path must be relative, got {relative_path!r}.")
    if any(part in ("", ".", "..") for part in relative_path.split("/")):
        raise BadPath(f"A recording path must not have empty, '.' or '..' parts, got {relative_path!r}.")
    return relative_path


def _scrubbed(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return aws.scrub(text, 500)


# --- the stores --------------------------------------------------------------------------------------------


class RecordingStore(abc.ABC):
    """Where recordings end up. Every method takes a path relative to the store (see check_path)."""

    name = ""
    # A failed healthcheck of a local store makes /readyz fail; a remote store's outage only degrades it
    # (recordings wait in the spool meanwhile; taking every portal process out of service would help nobody).
    critical = True

    @abc.abstractmethod
    def save(self, relative_path: str, file: BinaryIO) -> None:
        """Write the whole of `file` (read from its current position) as `relative_path`, replacing it."""

    @abc.abstractmethod
    def open(self, relative_path: str) -> BinaryIO:
        """A binary file-like object streaming the recording; FileNotFoundError when there is none."""

    @abc.abstractmethod
    def size(self, relative_path: str) -> int:
        """Its size in bytes; FileNotFoundError when there is none."""

    def exists(self, relative_path: str) -> bool:
        try:
            self.size(relative_path)
        except FileNotFoundError:
            return False
        return True

    @abc.abstractmethod
    def delete(self, relative_path: str) -> None:
        """Remove it; nothing happens when there is none."""

    @abc.abstractmethod
    def healthcheck(self) -> None:
        """Raise when the store cannot take recordings now."""


class FileSystemStore(RecordingStore):
    """Files under `root` (directories 0700, files 0600), each written to a temporary file and renamed into place."""

    name = "filesystem"

    def __init__(self, root: Path):
        self.root = Path(root)

    def __repr__(self):
        return f"FileSystemStore({str(self.root)!r})"

    def _path(self, relative_path: str) -> Path:
        return self.root / check_path(relative_path)

    def save(self, relative_path: str, file: BinaryIO) -> None:
        target = self._path(relative_path)
        try:
            private_dir(target.parent)
            fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")  # 0600
            try:
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(file, out, CHUNK)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
        except OSError as exc:
            raise StoreError(f"Cannot write {relative_path} in {self.root}: {_scrubbed(exc)}") from None

    def open(self, relative_path: str) -> BinaryIO:
        return open(self._path(relative_path), "rb")  # noqa: SIM115 (the caller closes it)

    def size(self, relative_path: str) -> int:
        return self._path(relative_path).stat().st_size

    def delete(self, relative_path: str) -> None:
        try:
            self._path(relative_path).unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"Cannot delete {relative_path} in {self.root}: {_scrubbed(exc)}") from None

    def healthcheck(self) -> None:
        fd, name = tempfile.mkstemp(prefix=".readyz-", dir=self.root)
        os.close(fd)
        os.unlink(name)


class _RawReader(io.RawIOBase):
    """Anything with read(n) (an S3 StreamingBody) as a raw stream, so that io.BufferedReader gives it read(n),
    readline() and iteration by lines; with `limit`, only its first `limit` bytes."""

    def __init__(self, stream, limit: int | None = None):
        self._stream, self._left = stream, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        want = len(buffer) if self._left is None else min(len(buffer), self._left)
        data = self._stream.read(want) if want > 0 else b""
        buffer[: len(data)] = data
        if self._left is not None:
            self._left -= len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
        super().close()


class S3Store(RecordingStore):
    """Objects `<prefix><path>` in one bucket, with server-side encryption (AES256 or aws:kms with a key).

    Credentials come from the default AWS chain (the instance or pod role, AWS_* variables); timeouts and
    retries from CLUSTERRA_AWS_*. Large recordings are uploaded in parts.
    """

    name = "s3"
    critical = False

    def __init__(self, *, bucket: str, prefix: str = "", region: str = "", endpoint_url: str = "", sse: str = "AES256",
                 kms_key_id: str = ""):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix
        session = boto3.session.Session()
        where = {"region_name": region or None, "endpoint_url": endpoint_url or None}
        self.client = session.client("s3", config=aws.client_config(), **where)
        # /readyz answers within 2 s: one try, short timeouts.
        probe = Config(connect_timeout=2, read_timeout=2, retries={"mode": "standard", "max_attempts": 1})
        self._probe = session.client("s3", config=aws.client_config().merge(probe), **where)
        self.extra_args = {}
        if sse != "none":
            self.extra_args["ServerSideEncryption"] = sse
        if sse == "aws:kms" and kms_key_id:
            self.extra_args["SSEKMSKeyId"] = kms_key_id
        self.transfer = TransferConfig(multipart_threshold=64 * CHUNK, multipart_chunksize=64 * CHUNK, max_concurrency=4)

    def __repr__(self):
        return f"S3Store(s3://{self.bucket}/{self.prefix})"

    def key(self, relative_path: str) -> str:
        return self.prefix + check_path(relative_path)

    def _fail(self, exc: Exception, action: str, relative_path: str | None):
        """The StoreError (or, for an object that is not there, FileNotFoundError) for a boto3 failure; None for others."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND and relative_path is not None:
                return FileNotFoundError(f"s3://{self.bucket}/{self.key(relative_path)} does not exist")
        if isinstance(exc, ClientError | BotoCoreError):
            error = aws.describe_client_error(exc, action)  # counted in the AWS error metrics
            if isinstance(exc, EndpointConnectionError):  # its message holds the whole URL, key and all
                return StoreError(f"Could not connect to the S3 endpoint {self.client.meta.endpoint_url} for {action}: check "
                                  "the network path, CLUSTERRA_RECORDINGS_S3_REGION and CLUSTERRA_RECORDINGS_S3_ENDPOINT_URL.")
            return StoreError(error.message)
        if isinstance(exc, S3UploadFailedError):
            return StoreError(f"The upload to S3 failed: {aws.scrub(str(exc))}")
        return None

    def _call(self, action: str, relative_path: str, fn, **params):
        try:
            return fn(**params)
        except Exception as exc:
            error = self._fail(exc, action, relative_path)
            if error is None:
                raise
        raise error

    def save(self, relative_path: str, file: BinaryIO) -> None:
        self._call("PutObject", relative_path, self.client.upload_fileobj, Fileobj=file, Bucket=self.bucket,
                   Key=self.key(relative_path), ExtraArgs=dict(self.extra_args), Config=self.transfer)

    def open(self, relative_path: str) -> BinaryIO:
        response = self._call("GetObject", relative_path, self.client.get_object, Bucket=self.bucket, Key=self.key(relative_path))
        return io.BufferedReader(_RawReader(response["Body"]), buffer_size=CHUNK)

    def size(self, relative_path: str) -> int:
        head = self._call("HeadObject", relative_path, self.client.head_object, Bucket=self.bucket, Key=self.key(relative_path))
        return head["ContentLength"]

    def delete(self, relative_path: str) -> None:
        self._call("DeleteObject", relative_path, self.client.delete_object, Bucket=self.bucket, Key=self.key(relative_path))

    def healthcheck(self) -> None:
        try:
            self._probe.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            error = self._fail(exc, "HeadBucket", None)
            if error is None:
                raise
            raise error from None


_stores: dict[tuple, RecordingStore] = {}
_stores_lock = threading.Lock()


def _store_settings() -> tuple:
    if settings.RECORDINGS_STORE == "s3":
        return ("s3", settings.RECORDINGS_S3_BUCKET, settings.RECORDINGS_S3_PREFIX, settings.RECORDINGS_S3_REGION,
                settings.RECORDINGS_S3_ENDPOINT_URL, settings.RECORDINGS_S3_SSE, settings.RECORDINGS_S3_KMS_KEY_ID)
    return ("filesystem", str(settings.RECORDINGS_DIR))


def get_store() -> RecordingStore:
    """The configured store (CLUSTERRA_RECORDINGS_STORE), one per process and configuration."""
    key = _store_settings()
    with _stores_lock:  # creating boto3 clients is not thread-safe; using them is
        store = _stores.get(key)
        if store is None:
            if key[0] == "s3":
                bucket, prefix, region, endpoint_url, sse, kms_key_id = key[1:]
                store = S3Store(bucket=bucket, prefix=prefix, region=region, endpoint_url=endpoint_url, sse=sse,
                                kms_key_id=kms_key_id)
            else:
                store = FileSystemStore(Path(key[1]))
            _stores[key] = store
        return store


# --- the spool ---------------------------------------------------------------------------------------------


def spool_path(relative_path: str) -> Path:
    return Path(settings.RECORDINGS_SPOOL_DIR) / check_path(relative_path)


def create_spool_file(relative_path: str) -> io.FileIO:
    """A new, unbuffered spool file for the recorder: 0600, in 0700 directories. FileExistsError if there is one."""
    path = spool_path(relative_path)
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    return os.fdopen(fd, "wb", buffering=0)


def _remove_spooled(relative_path: str) -> None:
    """Remove a spooled file and the directories it leaves empty."""
    path = spool_path(relative_path)
    path.unlink(missing_ok=True)
    root = Path(settings.RECORDINGS_SPOOL_DIR)
    parent = path.parent
    while parent != root and root in parent.parents:
        try:
            parent.rmdir()
        except OSError:  # not empty (another recording), or being used
            break
        parent = parent.parent


def check_spool() -> None:
    """Raise unless a file can be created in the spool (every terminal writes its recording there)."""
    spool = private_dir(Path(settings.RECORDINGS_SPOOL_DIR))
    fd, name = tempfile.mkstemp(prefix=".readyz-", dir=spool)
    os.close(fd)
    os.unlink(name)


# --- a session's logs: opened, ended ----------------------------------------------------------------------


def start_recording(session: TerminalSession) -> SessionLog:
    """The portal's recording of a new session (open_terminal_session): written into the spool from now on."""
    return SessionLog.objects.create(session=session, kind=Kind.ASCIICAST, path=check_path(session.recording_path),
                                     state=State.RECORDING)


def ssm_log_key(s: aws.SsmSettings, ssm_session_id: str) -> str:
    """Where the SSM agent writes a session's log: `<s3_prefix>/<session id>.log`."""
    prefix = s.s3_prefix.rstrip("/")
    return f"{prefix}/{ssm_session_id}.log" if prefix else f"{ssm_session_id}.log"


def session_ended(session: TerminalSession) -> None:
    """The session ended (finish_terminal_session, once): its recording is due for the store, SSM logs are awaited."""
    now = timezone.now()
    SessionLog.objects.filter(session=session, kind=Kind.ASCIICAST, state=State.RECORDING).update(
        state=State.SPOOLED, retry_at=now)
    _await_ssm_logs(session, now)
    schedule(session.pk)


def _await_ssm_logs(session: TerminalSession, now) -> None:
    """The SSM agent's logs of the session, as the cluster's settings have it write them: the S3 object (there when
    the session has ended) and the CloudWatch Logs stream (read once the agent has stopped adding to it)."""
    if session.backend != "ssm" or not session.backend_session_id:
        return  # not an SSM session, or it never started at AWS: no log will come
    try:
        s = aws.ssm_settings(session.cluster)
    except aws.AwsError as exc:
        logger.warning("terminal session %s: no SSM log is awaited: %s", session.pk, exc)
        return
    if not s.s3_bucket and not s.cloudwatch_log_group:
        return
    if not _SSM_SESSION_ID.match(session.backend_session_id):
        logger.warning("terminal session %s: the SSM session id %r is not a valid one; no SSM log is awaited",
                       session.pk, session.backend_session_id[:200])
        return
    base = session.recording_path.removesuffix(".cast") or f"{session.cluster.tenant.slug}/{session.pk}"
    if s.s3_bucket:
        SessionLog.objects.get_or_create(session=session, kind=Kind.SSM_S3, defaults={
            "path": check_path(f"{base}.ssm.log"), "state": State.AWAITED, "retry_at": now,
            "source": f"s3://{s.s3_bucket}/{ssm_log_key(s, session.backend_session_id)}",
        })
    if s.cloudwatch_log_group:
        from terminal import cloudwatch

        SessionLog.objects.get_or_create(session=session, kind=Kind.SSM_CLOUDWATCH, defaults={
            "path": check_path(f"{base}.cloudwatch.cast"), "state": State.AWAITED, "retry_at": now + cloudwatch.QUIET,
            "source": cloudwatch.stream_arn(s, session.backend_session_id),
        })


_publisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="session-logs-queue")


def schedule(session_id) -> None:
    """Queue store_session_logs for the session once the transaction commits.

    Published from a thread of its own: a broker that is down or blackholed never holds up the caller (a
    portal process ending a session). If it fails, the beat sweep does the work a little later.
    """
    from terminal.tasks import store_session_logs

    def send():
        try:
            store_session_logs.delay(str(session_id))
        except Exception as exc:
            logger.warning("could not queue the logs of terminal session %s (%s); the sweep will store them",
                           session_id, type(exc).__name__)

    transaction.on_commit(lambda: _publisher.submit(send))


# --- storing, fetching and indexing ------------------------------------------------------------------------


def _backoff(attempts: int) -> timedelta:
    return min(RETRY_FIRST * (2 ** max(attempts - 1, 0)), RETRY_MAX)


def _unclaimed(now) -> Q:
    return Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)


@contextlib.contextmanager
def _claimed(log: SessionLog):
    """Hold the log for this worker (yields False if another one has it): a conditional UPDATE, so that two
    workers never work on one log; a claim left by a worker that died runs out after CLAIM."""
    now = timezone.now()
    until = now + CLAIM
    if not SessionLog.objects.filter(_unclaimed(now), pk=log.pk).update(claimed_until=until):
        yield False
        return
    log.refresh_from_db()  # as it is now that it is ours
    try:
        yield True
    finally:
        SessionLog.objects.filter(pk=log.pk, claimed_until=until).update(claimed_until=None)
        log.claimed_until = None


def _update(log: SessionLog, **fields) -> bool:
    """Save `fields` if the log is still in the state this worker saw, and keep `log` in step."""
    updated = SessionLog.objects.filter(pk=log.pk, state=log.state).update(**fields, updated_at=timezone.now())
    if updated:
        for name, value in fields.items():
            setattr(log, name, value)
    return bool(updated)


def _failed(log: SessionLog, error: str, **fields) -> None:
    attempts = log.attempts + 1
    delay = _backoff(attempts)
    _update(log, attempts=attempts, last_error=aws.scrub(error, 500), retry_at=timezone.now() + delay, **fields)
    metrics.SESSION_LOGS.labels(kind=log.kind, outcome="store_failed" if log.state == State.SPOOLED else "fetch_failed").inc()
    logger.warning("%s log of terminal session %s: %s (attempt %d, again in %d s)", log.kind, log.session_id, error,
                   attempts, delay.total_seconds())


def _tenant(log: SessionLog):
    return log.session.cluster.tenant


def _store(log: SessionLog) -> bool:
    """Hand a spooled log to the store; True once it is there (and out of the spool)."""
    try:
        handle = open(spool_path(log.path), "rb")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        return _spool_file_gone(log)
    except OSError as exc:
        _failed(log, f"Cannot read the spooled file: {_scrubbed(exc)}")
        return False
    with handle:
        size = os.fstat(handle.fileno()).st_size
        try:
            store = get_store()
            store.save(log.path, handle)
            stored = store.size(log.path)
        except (StoreError, OSError) as exc:
            _failed(log, str(exc) if isinstance(exc, StoreError) else _scrubbed(exc))
            return False
    if stored != size:
        _failed(log, f"The store holds {stored} bytes of the {size} spooled; trying again.")
        return False
    if _update(log, state=State.STORED, size=size, stored_at=timezone.now(), retry_at=None, last_error=""):
        _remove_spooled(log.path)
        metrics.SESSION_LOGS.labels(kind=log.kind, outcome="stored").inc()
        logger.info("%s log of terminal session %s stored (%d bytes, %s)", log.kind, log.session_id, size, get_store().name)
    return True


def _spool_file_gone(log: SessionLog) -> bool:
    session = log.session
    owner = session.owner
    here = socket.gethostname()[:255]
    if owner is not None and owner.hostname != here:  # spooled on another machine: a worker there stores it
        _update(log, retry_at=timezone.now() + RETRY_FIRST, last_error=f"Spooled on {owner.hostname}, not on {here}.")
        return False
    try:
        size = get_store().size(log.path)
    except FileNotFoundError:
        size = None
    except (StoreError, OSError) as exc:
        _failed(log, f"The spooled file is gone and the store cannot be asked for it: {exc}")
        return False
    if size is not None:  # stored before, and the database never heard (the worker died in between)
        _update(log, state=State.STORED, size=size, stored_at=timezone.now(), retry_at=None, last_error="")
        return True
    started = bool(session.backend_session_id)
    why = "The spooled recording is gone." if started else "Nothing was recorded: the shell did not start."
    unindexed = log.index_state in (IndexState.PENDING, IndexState.FAILED)
    _update(log, state=State.MISSING, retry_at=None, last_error=why,
            **({"index_state": IndexState.SKIPPED, "index_note": why} if unindexed else {}))
    metrics.SESSION_LOGS.labels(kind=log.kind, outcome="missing").inc()
    if started:
        record_event("terminal.session.log_missing", tenant=_tenant(log), target=session,
                     data={"kind": log.kind, "path": log.path, "reason": why})
    return False


def _s3_object(source: str) -> tuple[str, str]:
    bucket, _, key = source.removeprefix("s3://").partition("/")
    return bucket, key


def _fetch(log: SessionLog) -> bool:
    """Copy an awaited SSM log into the spool, from the cluster's bucket or its log group; True once it is there."""
    return _fetch_cloudwatch(log) if log.kind == Kind.SSM_CLOUDWATCH else _fetch_s3(log)


def _fetch_s3(log: SessionLog) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = _s3_object(log.source)
    try:
        client = aws.auditor_client(log.session.cluster, "s3")
        head = client.head_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError, aws.AwsError) as exc:
        return _not_fetched(log, exc, "HeadObject", not_found=_NOT_FOUND)
    size = head["ContentLength"]
    limit = settings.RECORDINGS_MAX_BYTES
    if size > limit:
        _reject(log, size, f"{log.source} is {size} bytes, over CLUSTERRA_RECORDINGS_MAX_BYTES ({limit}); it was not fetched.")
        return False
    try:
        with _spool_writer(log.path) as out:
            body = client.get_object(Bucket=bucket, Key=key)["Body"]
            with contextlib.closing(body):
                for chunk in body.iter_chunks(CHUNK):
                    out.write(chunk)
                    if out.tell() > limit:
                        raise OSError(f"the object grew past CLUSTERRA_RECORDINGS_MAX_BYTES ({limit})")
    except (ClientError, BotoCoreError) as exc:
        return _not_fetched(log, exc, "GetObject")
    except OSError as exc:
        _failed(log, f"Cannot copy {log.source} into the spool: {_scrubbed(exc)}")
        return False
    return _fetched(log)


def _fetch_cloudwatch(log: SessionLog) -> bool:
    """The session's CloudWatch Logs stream, once the agent has stopped adding to it, as an asciicast recording."""
    from botocore.exceptions import BotoCoreError, ClientError

    from terminal import cloudwatch

    group, stream = cloudwatch.parse_stream_arn(log.source)
    try:
        client = aws.auditor_client(log.session.cluster, "logs")
        found = cloudwatch.find_stream(client, group, stream)
    except (ClientError, BotoCoreError, aws.AwsError) as exc:  # not found: the log group does not exist
        return _not_fetched(log, exc, "DescribeLogStreams", not_found=cloudwatch.NOT_FOUND)
    if found is None:
        return _not_there_yet(log, f"{log.source} is not there yet.", absent=True)
    idle = cloudwatch.idle_for(found, timezone.now())
    if idle is not None and idle < cloudwatch.QUIET:
        return _not_there_yet(log, f"{log.source} is still being written to (last {int(idle.total_seconds())} s ago).")
    session = log.session
    try:
        with _spool_writer(log.path) as out:
            cloudwatch.write_cast(cloudwatch.events(client, group, stream), out, started_at=session.started_at,
                                  title=f"{session.posix_username}@{session.cluster.slug} (CloudWatch Logs)",
                                  limit=settings.RECORDINGS_MAX_BYTES)
    except cloudwatch.StreamTooLarge as exc:
        _reject(log, exc.size, f"{log.source} {exc}; it was not fetched.")
        return False
    except (ClientError, BotoCoreError) as exc:  # not found: the stream or its group was deleted meanwhile
        return _not_fetched(log, exc, "GetLogEvents", not_found=cloudwatch.NOT_FOUND)
    except OSError as exc:
        _failed(log, f"Cannot write {log.source} into the spool: {_scrubbed(exc)}")
        return False
    return _fetched(log)


@contextlib.contextmanager
def _spool_writer(relative_path: str):
    """A new file (0600) that becomes the spooled `relative_path` when the block ends, and is removed if it fails."""
    target = spool_path(relative_path)
    private_dir(target.parent)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _fetched(log: SessionLog) -> bool:
    """The fetched log is in the spool: index and store it from there."""
    size = spool_path(log.path).stat().st_size
    if not _update(log, state=State.SPOOLED, size=size, attempts=0, last_error="", retry_at=timezone.now()):
        return False
    logger.info("%s log of terminal session %s fetched from %s (%d bytes)", log.kind, log.session_id, log.source, size)
    metrics.SESSION_LOGS.labels(kind=log.kind, outcome="fetched").inc()
    return True


def _not_fetched(log: SessionLog, exc: Exception, action: str, *, not_found: frozenset | set = frozenset()) -> bool:
    """A fetch failed: AWS answered that the log is not there (an error code in `not_found`), or could not be asked
    (no credentials, access denied, unreachable: never counted as the log being absent)."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError) and str(exc.response.get("Error", {}).get("Code", "")) in not_found:
        detail = aws.scrub(exc.response.get("Error", {}).get("Message") or "", 200)
        return _not_there_yet(log, f"{log.source} is not there yet{f' ({detail})' if detail else ''}.", absent=True)
    return _not_there_yet(log, aws.describe_client_error(exc, action).message)


def _reject(log: SessionLog, size: int | None, why: str) -> None:
    """Too large to fetch: it stays where the agent put it, and the session is flagged."""
    _update(log, state=State.REJECTED, size=size, retry_at=None, last_error=why, index_state=IndexState.SKIPPED,
            index_note=why)
    metrics.SESSION_LOGS.labels(kind=log.kind, outcome="rejected").inc()
    record_event("terminal.session.log_rejected", tenant=_tenant(log), target=log.session,
                 data={"kind": log.kind, "source": log.source, "size": size, "limit": settings.RECORDINGS_MAX_BYTES})


def _not_there_yet(log: SessionLog, error: str, *, absent: bool = False) -> bool:
    """The SSM log is not there yet (absent), or AWS could not be asked: late, then missing (only when AWS answered
    that there is no such object or log stream: a bucket or log group that cannot be read keeps it late and retried)."""
    session = log.session
    waited = timezone.now() - (session.ended_at or log.created_at)
    data = {"kind": log.kind, "source": log.source, "waited_seconds": int(waited.total_seconds()), "error": error}
    if absent and waited >= timedelta(seconds=settings.SSM_LOG_MISSING_SECONDS):
        why = f"{log.source} did not appear within {settings.SSM_LOG_MISSING_SECONDS} s of the session's end."
        _update(log, state=State.MISSING, attempts=log.attempts + 1, retry_at=None, last_error=why,
                index_state=IndexState.SKIPPED, index_note=why)
        record_event("terminal.session.log_missing", tenant=_tenant(log), target=session, data=data)
        metrics.SESSION_LOGS.labels(kind=log.kind, outcome="missing").inc()
        return False
    if log.state == State.AWAITED and waited >= timedelta(seconds=settings.SSM_LOG_LATE_SECONDS):
        if _update(log, state=State.LATE):
            record_event("terminal.session.log_late", tenant=_tenant(log), target=session, data=data)
            metrics.SESSION_LOGS.labels(kind=log.kind, outcome="late").inc()
    _failed(log, error)
    return False


def _index_due(log: SessionLog) -> bool:
    if log.index_state not in (IndexState.PENDING, IndexState.FAILED) or log.index_attempts >= INDEX_MAX_ATTEMPTS:
        return False
    return log.index_retry_at is None or log.index_retry_at <= timezone.now()


def _index(log: SessionLog) -> None:
    """Index the log for search (audit/indexing.py), from the spool while it is there, else from the store."""
    limit = settings.RECORDINGS_MAX_BYTES
    try:
        from audit.indexing import index_recording

        with open_log(log) as handle:
            size = log.size if log.state == State.STORED and log.size is not None else _stream_size(handle)
            reader = handle if size is None or size <= limit else io.BufferedReader(_RawReader(handle, limit), CHUNK)
            result = index_recording(log.session, reader, log_kind=log.kind)
    except Exception as exc:  # the indexer or the store failed: try again later, a few times
        logger.exception("%s log of terminal session %s: indexing failed", log.kind, log.session_id)
        attempts = log.index_attempts + 1
        again = timezone.now() + _backoff(attempts) if attempts < INDEX_MAX_ATTEMPTS else None
        _update(log, index_state=IndexState.FAILED, index_attempts=attempts, index_retry_at=again,
                index_note=aws.scrub(f"{type(exc).__name__}: {_scrubbed(exc)}", 500))
        return
    note = result.note or ""
    truncated = size is not None and size > limit
    if truncated:
        note = f"Only the first {limit} of {size} bytes were indexed (CLUSTERRA_RECORDINGS_MAX_BYTES). {note}".strip()
    complete = result.complete and not truncated
    _update(log, index_state=IndexState.INDEXED if complete else IndexState.PARTIAL, index_note=note[:500],
            indexed_at=timezone.now(), indexed_lines=result.lines, index_retry_at=None)


def _stream_size(handle) -> int | None:
    try:
        return os.fstat(handle.fileno()).st_size
    except (OSError, AttributeError, io.UnsupportedOperation):
        return None


_STORE_DUE = (State.SPOOLED, State.AWAITED, State.LATE)


def process(log: SessionLog, *, store: bool = True) -> bool | None:
    """Move one log on as far as it goes now: fetch (SSM), index, store (unless `store` is False). True: stored;
    False: the store or the fetch failed (tried again later); None: nothing to do for the store, or another
    worker has the log."""
    with _claimed(log) as ours:
        if not ours:
            return None
        due = store and log.state in _STORE_DUE and (log.retry_at is None or log.retry_at <= timezone.now())
        if due and log.state in (State.AWAITED, State.LATE) and not _fetch(log):
            return False
        if log.state in (State.SPOOLED, State.STORED) and _index_due(log):
            _index(log)  # before the store: a store outage does not hold up search
        if due and log.state == State.SPOOLED:
            return _store(log)
        return None


def _logs():
    return SessionLog.objects.select_related("session__cluster__tenant", "session__owner", "session__user")


def _due(now) -> Q:
    store_due = Q(state__in=_STORE_DUE, retry_at__lte=now)
    index_due = (Q(state__in=(State.SPOOLED, State.STORED), index_state__in=(IndexState.PENDING, IndexState.FAILED),
                   index_attempts__lt=INDEX_MAX_ATTEMPTS)
                 & (Q(index_retry_at__isnull=True) | Q(index_retry_at__lte=now)))
    return (store_due | index_due) & _unclaimed(now)


def store_session_logs(session_id) -> int:
    """The due logs of one session (queued when it ends). Returns how many were stored."""
    logs = _logs().filter(_due(timezone.now()), session_id=session_id)
    return sum(1 for log in logs if process(log))


def sweep(limit: int = 200) -> int:
    """Everything due: spooled logs not stored yet, awaited SSM logs, logs not indexed yet (Celery beat).

    Returns how many were stored. After SWEEP_STORE_FAILURES store failures in a row it stops trying the
    store (the rest is still indexed) and leaves it to the next sweep."""
    now = timezone.now()
    stored = failures = 0
    for log in _logs().filter(_due(now)).order_by("retry_at", "index_retry_at")[:limit]:
        outcome = process(log, store=failures < SWEEP_STORE_FAILURES or log.state != State.SPOOLED)
        if outcome is True:
            stored, failures = stored + 1, 0
        elif outcome is False and log.state == State.SPOOLED:
            failures += 1
    waiting = dict(SessionLog.objects.filter(state__in=_STORE_DUE).values_list("state").annotate(Count("pk")))
    for state in _STORE_DUE:
        metrics.SESSION_LOGS_WAITING.labels(state=state).set(waiting.get(state, 0))
    return stored


# --- reading -----------------------------------------------------------------------------------------------


_UNAVAILABLE = {
    State.AWAITED: "The SSM agent has not delivered this session's log yet.",
    State.LATE: "The SSM agent's log of this session is late: the agent has not delivered it yet.",
    State.MISSING: "This log is missing.",
    State.REJECTED: "This log is over the size limit and was not fetched.",
    State.EXPIRED: "This log was deleted after the tenant's retention period.",
}


def status_text(log: SessionLog) -> str:
    """One sentence for the session page on where the log is; the problems (late, missing, …) say so."""
    if log.state in _UNAVAILABLE:
        return _UNAVAILABLE[log.state] + (f" ({log.last_error})" if log.last_error else "")
    if log.state == State.SPOOLED and log.attempts:
        return f"Not in the recording store yet ({log.attempts} tries; {log.last_error}); it plays from the spool meanwhile."
    return log.get_state_display() + "."


def open_log(log: SessionLog) -> BinaryIO:
    """The log's bytes (a binary file-like object; close it): from the store once it is there, from the spool
    until then (also while the session is live). RecordingUnavailable says why there is nothing to read."""
    if log.state in (State.RECORDING, State.SPOOLED):
        try:
            return open(spool_path(log.path), "rb")  # noqa: SIM115 (the caller closes it)
        except FileNotFoundError:
            log.refresh_from_db()  # stored meanwhile?
    if log.state == State.STORED:
        try:
            return get_store().open(log.path)
        except FileNotFoundError:
            raise RecordingUnavailable("The store does not have this log (it was deleted there).") from None
        except StoreError as exc:
            raise RecordingUnavailable(f"The recording store cannot be read now: {exc}") from None
    raise RecordingUnavailable(_UNAVAILABLE.get(log.state, "This log cannot be read now."))


def open_recording(session: TerminalSession, kind: str = Kind.ASCIICAST) -> BinaryIO:
    """The session's recording (or, with kind="ssm_s3" or "ssm_cloudwatch", an SSM agent's log): see open_log."""
    log = SessionLog.objects.filter(session=session, kind=kind).first()
    if log is None:
        raise RecordingUnavailable("This session has no such log.")
    return open_log(log)


# --- retention ---------------------------------------------------------------------------------------------


def expire_recordings(now=None) -> int:
    """Delete the logs of sessions that ended longer ago than their tenant's recording_retention_days (0: kept
    forever): from the store, the spool and the search index. One audit event per tenant and run. Returns how
    many logs were deleted."""
    from accounts.models import Tenant
    from audit.indexing import delete_session_index

    now = now or timezone.now()
    total = 0
    for tenant in Tenant.objects.filter(recording_retention_days__gt=0):
        cutoff = now - timedelta(days=tenant.recording_retention_days)
        logs = (_logs().filter(_unclaimed(now), session__cluster__tenant=tenant, session__ended_at__lt=cutoff)
                .exclude(state=State.EXPIRED).order_by("session__ended_at")[:EXPIRE_BATCH])
        sessions, deleted, size, failed = set(), 0, 0, 0
        for log in logs:
            with _claimed(log) as ours:
                if not ours or log.state == State.EXPIRED:
                    continue
                try:
                    get_store().delete(log.path)
                    _remove_spooled(log.path)
                    delete_session_index(log.session_id, log_kind=log.kind)
                except (StoreError, OSError) as exc:
                    failed += 1
                    _update(log, last_error=f"Could not delete it: {_scrubbed(exc)}")
                    continue
                _update(log, state=State.EXPIRED, retry_at=None, index_state=IndexState.SKIPPED, index_retry_at=None,
                        index_note="Deleted with the log (retention).", indexed_lines=0)
            sessions.add(log.session_id)
            deleted, size = deleted + 1, size + (log.size or 0)
            metrics.SESSION_LOGS.labels(kind=log.kind, outcome="expired").inc()
        if deleted or failed:
            record_event("recording.expire", tenant=tenant, data={
                "sessions": len(sessions), "logs": deleted, "bytes": size, "failed": failed,
                "retention_days": tenant.recording_retention_days, "ended_before": cutoff.isoformat()})
        total += deleted
    return total
