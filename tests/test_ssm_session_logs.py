"""SSM session logs (terminal/recordings.py): the agent's `<s3_prefix>/<session id>.log` in the cluster's bucket is
fetched with the cluster's auditor credentials, stored beside the portal's own recording, indexed and linked to
its session; a log that does not come is flagged late, then missing, with audit events.

AWS is moto (STS and S3). moto's STS accepts any web-identity token, so the token the portal sent is checked
here against the portal's published keys, as IAM would. Time passes by moving timestamps, never by sleeping.
"""

from datetime import timedelta

import boto3
import jwt
import pytest
from django.utils import timezone
from moto import mock_aws

from accounts import issuer
from audit.models import AuditEvent
from clusters import aws
from clusters.models import Cluster
from terminal import recordings
from terminal.actions import attach_backend_session, finish_terminal_session, open_terminal_session
from terminal.models import SessionLog, TerminalSession
from terminal.recording import AsciicastRecorder
from terminal.recordings import RecordingUnavailable, open_recording
from tests.test_recording_store import LOGIN_SHELL, files_under, found

pytestmark = pytest.mark.django_db

ISSUER = "https://portal.example.test"
REGION = "eu-west-1"
ROLE = "arn:aws:iam::123456789012:role/ClusterraShell"
LOG_BUCKET = "acme-ssm-logs"
SSM_SETTINGS = {"region": REGION, "instance_id": "i-0123456789abcdef0", "role_arn": ROLE, "s3_bucket": LOG_BUCKET,
                "s3_prefix": "hpc/sessions/"}
State, IndexState = SessionLog.State, SessionLog.IndexState

# What the agent uploads on Linux: `script`'s header and footer, raw PTY output with escapes, echoed input,
# a backspaced-over typo and a redrawn prompt; no timing.
RAW_LOG = (
    b'Script started on 2026-12-02 10:00:00+00:00 [TERM="xterm-256color" TTY="/dev/pts/3" COLUMNS="120" LINES="40"]\n'
    b"\x1b]0;bob@head:~\x07\x1b[01;32mbob@head\x1b[00m:\x1b[01;34m~\x1b[00m$ echo hi; ls /tmp\r\n"
    b"hi\r\n\x1b[0m\x1b[01;34mslurm-spool\x1b[0m  results-2026.csv\r\n"
    b"\x1b[01;32mbob@head\x1b[00m:\x1b[01;34m~\x1b[00m$ sbatch --mem=64G --wrap 'rm -rf /fsx/scratch/bob/tmq\x08 \x08p'\r\n"
    b"Submitted batch job 4242\r\n"
    b"\x1b[01;32mbob@head\x1b[00m:\x1b[01;34m~\x1b[00m$ exit\r\nexit\r\n"
    b'\nScript done on 2026-12-02 10:01:07+00:00 [COMMAND_EXIT_CODE="0"]\n'
)


@pytest.fixture(autouse=True)
def _aws(settings, monkeypatch):
    settings.AWS_ISSUER_URL = ISSUER
    settings.AWS_MAX_ATTEMPTS = 1
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)  # the auditor's credentials come from STS, nothing else
    recordings._stores.clear()
    aws.forget_credentials()
    yield
    aws.forget_credentials()


@pytest.fixture
def ssm(cast):
    Cluster.objects.filter(pk=cast.hpc.pk).update(backend="ssm", backend_settings=SSM_SETTINGS)
    cast.hpc.refresh_from_db()
    with mock_aws():
        cast.s3 = boto3.client("s3", region_name=REGION)
        cast.s3.create_bucket(Bucket=LOG_BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        yield cast


@pytest.fixture
def sts_calls(monkeypatch):
    calls = []
    real = aws._sts_client

    def client(s):
        sts = real(s)
        sts.meta.events.register("before-parameter-build.sts.AssumeRoleWithWebIdentity",
                                 lambda params, **kwargs: calls.append(dict(params)))
        return sts

    monkeypatch.setattr(aws, "_sts_client", client)
    return calls


def ssm_session_id(cast) -> str:
    return f"tenant-{cast.acme.pk}-user-{cast.bob.pk}-0a1b2c3d4e5f67890"


def ended_ssm_session(cast, ssm_id: str | None = None) -> TerminalSession:
    """A session on the SSM cluster that ran (SSM session id attached, output recorded) and ended."""
    session = open_terminal_session(user=cast.bob, tenant_slug="acme", cluster_slug="hpc", working_directory=None,
                                    client_address="127.0.0.1", user_agent="pytest")
    attach_backend_session(session, ssm_id or ssm_session_id(cast))
    recorder = AsciicastRecorder(session.recording_path, cols=120, rows=40, title="bob@hpc", shell=LOGIN_SHELL)
    recorder.output(b"$ echo hi\r\nhi\r\n")
    recorder.close()
    finish_terminal_session(session, reason="closed")
    return session


def ssm_log(session) -> SessionLog:
    return SessionLog.objects.get(session=session, kind=SessionLog.Kind.SSM_S3)


def key_of(cast, ssm_id=None) -> str:
    return f"hpc/sessions/{ssm_id or ssm_session_id(cast)}.log"


def ended_ago(session, kind: str = "ssm_s3", **delta) -> None:
    """Time travel: the session ended that long ago, and its log's next try is due now."""
    TerminalSession.objects.filter(pk=session.pk).update(ended_at=timezone.now() - timedelta(**delta))
    SessionLog.objects.filter(session=session, kind=kind).update(retry_at=timezone.now())


def test_an_ssm_log_is_fetched_stored_indexed_and_linked_to_its_session(ssm, settings, sts_calls):
    session = ended_ssm_session(ssm)
    log = ssm_log(session)
    assert log.state == State.AWAITED and log.source == f"s3://{LOG_BUCKET}/{key_of(ssm)}"
    assert log.path == session.recording_path.removesuffix(".cast") + ".ssm.log"
    ssm.s3.put_object(Bucket=LOG_BUCKET, Key=key_of(ssm), Body=RAW_LOG)

    assert recordings.store_session_logs(session.pk) == 2  # the portal's recording and the agent's log
    log.refresh_from_db()
    assert (log.state, log.size, log.last_error, log.session_id) == (State.STORED, len(RAW_LOG), "", session.pk)
    assert (settings.RECORDINGS_DIR / log.path).read_bytes() == RAW_LOG
    assert files_under(settings.RECORDINGS_SPOOL_DIR) == []
    with open_recording(session, kind="ssm_s3") as handle:
        assert handle.read() == RAW_LOG
    assert {row.kind for row in session.logs.all()} == {"asciicast", "ssm_s3"}

    # Fetched as the cluster's auditor: its own subject, and a Run As user that cannot open a shell.
    [call] = sts_calls
    subject = f"cluster-{ssm.hpc.pk}-auditor"
    assert call["RoleArn"] == ROLE and call["RoleSessionName"] == subject == aws.auditor_subject(ssm.hpc)
    keys = jwt.PyJWKSet.from_dict(issuer.jwks())
    token = call["WebIdentityToken"]
    claims = jwt.decode(token, key=keys[jwt.get_unverified_header(token)["kid"]].key, algorithms=["RS256"],
                        audience="sts.amazonaws.com", issuer=ISSUER)
    assert claims["sub"] == subject
    assert claims["https://aws.amazon.com/tags"]["principal_tags"] == {"SSMSessionRunAs": [aws.AUDITOR_RUN_AS]}

    # Indexed as the screen showed it: escapes gone, the backspaced-over typo corrected.
    assert log.index_state == IndexState.INDEXED and log.indexed_lines > 0, (log.index_state, log.index_note)
    assert found(ssm.acme, "rm -rf /fsx/scratch/bob/tmp'") == {str(session.pk)}
    assert found(ssm.acme, "--mem=64G") == {str(session.pk)} and found(ssm.acme, "results-2026.csv") == {str(session.pk)}
    assert found(ssm.acme, "tmq") == set() and found(ssm.acme, "Script started") == set()
    assert found(ssm.other, "--mem=64G") == set()
    assert recordings.store_session_logs(session.pk) == 0  # done


def late_then_missing(session, kind: str) -> tuple[AuditEvent, AuditEvent]:
    """Walk an SSM log that never comes past the thresholds (tried once already): awaited within 15 min, late after
    (one event, however long it stays late), missing after 24 h (another event), then never tried again. Returns the
    two events."""
    def log() -> SessionLog:
        return SessionLog.objects.get(session=session, kind=kind)

    ended_ago(session, kind, minutes=14)
    recordings.sweep()
    assert log().state == State.AWAITED  # within the threshold

    ended_ago(session, kind, minutes=16)
    recordings.sweep()
    assert (log().state, log().attempts) == (State.LATE, 3)
    [late] = AuditEvent.objects.filter(action="terminal.session.log_late")
    assert late.tenant_id == session.cluster.tenant_id and late.target_id == str(session.pk)
    assert late.data["kind"] == kind and late.data["source"] == log().source and late.data["waited_seconds"] >= 16 * 60
    with pytest.raises(RecordingUnavailable, match="late"):
        open_recording(session, kind=kind)
    assert recordings.status_text(log()).startswith("The SSM agent's log of this session is late")

    ended_ago(session, kind, hours=3)
    recordings.sweep()
    assert log().state == State.LATE
    assert AuditEvent.objects.filter(action="terminal.session.log_late").count() == 1  # flagged once

    ended_ago(session, kind, hours=25)
    recordings.sweep()
    missing_log = log()
    assert missing_log.state == State.MISSING and missing_log.retry_at is None and missing_log.index_state == IndexState.SKIPPED
    [missing] = AuditEvent.objects.filter(action="terminal.session.log_missing")
    assert missing.target_id == str(session.pk) and missing.data["source"] == missing_log.source
    with pytest.raises(RecordingUnavailable, match="missing"):
        open_recording(session, kind=kind)
    assert recordings.sweep() == 0 and log().state == State.MISSING  # not tried again
    return late, missing


def test_a_log_that_never_comes_is_late_then_missing_never_silently_absent(ssm):
    session = ended_ssm_session(ssm)
    recordings.store_session_logs(session.pk)
    log = ssm_log(session)
    assert log.state == State.AWAITED and log.attempts == 1 and "is not there yet" in log.last_error
    assert log.retry_at > timezone.now()
    assert not AuditEvent.objects.filter(action__startswith="terminal.session.log_").exists()
    late_then_missing(session, "ssm_s3")


def test_a_log_that_comes_late_is_still_fetched(ssm, settings):
    session = ended_ssm_session(ssm)
    ended_ago(session, minutes=20)
    recordings.sweep()
    assert ssm_log(session).state == State.LATE
    ssm.s3.put_object(Bucket=LOG_BUCKET, Key=key_of(ssm), Body=RAW_LOG)
    ended_ago(session, minutes=30)
    recordings.sweep()
    log = ssm_log(session)
    assert log.state == State.STORED and (settings.RECORDINGS_DIR / log.path).read_bytes() == RAW_LOG
    assert AuditEvent.objects.filter(action="terminal.session.log_late").count() == 1  # the event stays


def test_a_bucket_that_cannot_be_read_keeps_the_log_late_not_missing(ssm, s3_closed_port):
    Cluster.objects.filter(pk=ssm.hpc.pk).update(
        backend_settings={**SSM_SETTINGS, "endpoint_urls": {"s3": s3_closed_port}})  # STS still answers
    session = ended_ssm_session(ssm)
    ended_ago(session, hours=30)
    recordings.sweep()
    log = ssm_log(session)
    assert log.state == State.LATE and "Could not connect" in log.last_error and log.retry_at > timezone.now()
    assert AuditEvent.objects.filter(action="terminal.session.log_late").count() == 1
    assert not AuditEvent.objects.filter(action="terminal.session.log_missing").exists()


@pytest.fixture
def s3_closed_port():
    import socket

    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{reserved.getsockname()[1]}"


def test_a_log_over_the_size_limit_is_not_fetched_and_is_flagged(ssm, settings):
    settings.RECORDINGS_MAX_BYTES = 1024
    session = ended_ssm_session(ssm)
    ssm.s3.put_object(Bucket=LOG_BUCKET, Key=key_of(ssm), Body=RAW_LOG * 4)
    recordings.store_session_logs(session.pk)
    log = ssm_log(session)
    assert log.state == State.REJECTED and log.size == len(RAW_LOG) * 4 and "CLUSTERRA_RECORDINGS_MAX_BYTES" in log.last_error
    assert not (settings.RECORDINGS_DIR / log.path).exists() and files_under(settings.RECORDINGS_SPOOL_DIR) == []
    [event] = AuditEvent.objects.filter(action="terminal.session.log_rejected")
    assert event.data == {"kind": "ssm_s3", "source": log.source, "size": len(RAW_LOG) * 4, "limit": 1024}


def test_no_log_is_awaited_without_a_bucket_a_started_session_or_a_valid_session_id(ssm):
    bad = ended_ssm_session(ssm, ssm_id="../../etc/passwd")  # never put into an S3 key
    assert not SessionLog.objects.filter(session=bad, kind="ssm_s3").exists()
    never = open_terminal_session(user=ssm.bob, tenant_slug="acme", cluster_slug="hpc", working_directory=None,
                                  client_address=None, user_agent="")
    finish_terminal_session(never, reason="backend_error", message="StartSession failed")  # no SSM session id
    assert not SessionLog.objects.filter(session=never, kind="ssm_s3").exists()
    Cluster.objects.filter(pk=ssm.hpc.pk).update(backend_settings={k: v for k, v in SSM_SETTINGS.items()
                                                                   if k not in ("s3_bucket", "s3_prefix")})
    no_bucket = ended_ssm_session(ssm)
    assert not SessionLog.objects.filter(session=no_bucket, kind="ssm_s3").exists()
    assert SessionLog.objects.filter(session=no_bucket, kind="asciicast").exists()  # the portal records all the same


def test_an_empty_prefix_puts_the_log_at_the_top_of_the_bucket(ssm):
    Cluster.objects.filter(pk=ssm.hpc.pk).update(backend_settings={**SSM_SETTINGS, "s3_prefix": ""})
    session = ended_ssm_session(ssm)
    assert ssm_log(session).source == f"s3://{LOG_BUCKET}/{ssm_session_id(ssm)}.log"
