"""SSM session logs streamed to CloudWatch Logs (terminal/cloudwatch.py, terminal/recordings.py): the log stream named
after the SSM session id in the cluster's `cloudwatch_log_group` is read with the cluster's auditor credentials once
the session has ended and the agent has stopped writing to it, stored as a timed asciicast beside the portal's own
recording, indexed and found with its time; a stream that does not come is flagged late, then missing.

AWS is moto (STS and CloudWatch Logs), as in tests/test_ssm_session_logs.py, whose fixtures these reuse. Time passes by
moving timestamps, never by sleeping.
"""

import io
import json
from datetime import timedelta

import boto3
import orjson
import pytest
from botocore.awsrequest import AWSResponse
from django.test import Client
from django.utils import timezone
from moto import mock_aws

from audit.models import AuditEvent
from audit.search import SessionFilter, search
from audit.transcript import transcribe
from clusters import aws
from clusters.models import Cluster
from terminal import cloudwatch, recordings
from terminal.models import SessionLog, TerminalSession
from terminal.recordings import open_recording
from tests.test_recording_store import files_under, found
from tests.test_ssm_session_logs import (  # noqa: F401 (fixtures)
    REGION,
    ROLE,
    SSM_SETTINGS,
    _aws,
    ended_ago,
    ended_ssm_session,
    late_then_missing,
    s3_closed_port,
    ssm_session_id,
    sts_calls,
)

pytestmark = pytest.mark.django_db

GROUP = "/clusterra/acme/hpc-sessions"
INSTANCE = SSM_SETTINGS["instance_id"]
CW_SETTINGS = {k: v for k, v in SSM_SETTINGS.items() if k not in ("s3_bucket", "s3_prefix")} | {"cloudwatch_log_group": GROUP}
State, IndexState, Kind = SessionLog.State, SessionLog.IndexState, SessionLog.Kind
CW = Kind.SSM_CLOUDWATCH


@pytest.fixture
def cw(cast, monkeypatch):
    """The cast's hpc cluster streams sessions to GROUP; the agent's last write is long past (no quiet period)."""
    Cluster.objects.filter(pk=cast.hpc.pk).update(backend="ssm", backend_settings=CW_SETTINGS)
    cast.hpc.refresh_from_db()
    monkeypatch.setattr(cloudwatch, "QUIET", timedelta(0))
    with mock_aws():
        cast.logs = boto3.client("logs", region_name=REGION)
        cast.logs.create_log_group(logGroupName=GROUP)
        yield cast


def streamed_session(cast, ssm_id: str | None = None) -> TerminalSession:
    """An SSM session that ran and ended (tests/test_ssm_session_logs.py), its start on a whole millisecond so that
    the agent's millisecond timestamps give exact offsets."""
    session = ended_ssm_session(cast, ssm_id)
    started = session.started_at.replace(microsecond=session.started_at.microsecond // 1000 * 1000)
    TerminalSession.objects.filter(pk=session.pk).update(started_at=started)
    session.refresh_from_db()
    return session


def agent_event(session, seconds: float, lines: list[str], *, ssm_id: str) -> dict:
    """What the agent puts for output printed `seconds` into the session: eventTime to the second, the event's
    timestamp to the millisecond (both taken as it builds the message)."""
    at = session.started_at + timedelta(seconds=seconds)
    message = {
        "eventVersion": "1.0", "eventTime": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "awsRegion": REGION,
        "target": {"id": INSTANCE}, "userIdentity": {"arn": f"arn:aws:sts::123456789012:assumed-role/ClusterraShell/{ssm_id}"},
        "runAsUser": "bob", "sessionId": ssm_id, "sessionData": lines,
    }
    return {"timestamp": round(at.timestamp() * 1000), "message": json.dumps(message)}


def stream_to(cast, session, batches: list[list[tuple[float, list[str]]]]) -> None:
    """The agent streams the session: one PutLogEvents per batch of (seconds, lines) events."""
    ssm_id = session.backend_session_id
    cast.logs.create_log_stream(logGroupName=GROUP, logStreamName=ssm_id)
    for batch in batches:
        cast.logs.put_log_events(logGroupName=GROUP, logStreamName=ssm_id,
                                 logEvents=[agent_event(session, t, lines, ssm_id=ssm_id) for t, lines in batch])


def cw_log(session) -> SessionLog:
    return SessionLog.objects.get(session=session, kind=Kind.SSM_CLOUDWATCH)


def cast_events(data: bytes) -> tuple[dict, list[list]]:
    header, *events = data.splitlines()
    return orjson.loads(header), [orjson.loads(line) for line in events]


SESSION = [
    [(1.25, ["bob@head:~$ echo hi; ls /tmp", "hi", "slurm-spool  results-2026.csv"])],  # one event, several lines
    [(4.5, ["bob@head:~$ rm -rf /fsx/scratch/bob/tmp"]),
     (6.75, ["bob@head:~$ sbatch --mem=64G job.sh", "Submitted batch job 4242"])],
    [(9.0, ["bob@head:~$ exit", "exit"])],
]


def test_a_stream_is_fetched_stored_as_a_timed_recording_indexed_and_found_at_its_time(cw, settings, sts_calls):  # noqa: F811
    session = streamed_session(cw)
    log = cw_log(session)
    assert log.state == State.AWAITED
    assert log.source == f"arn:aws:logs:{REGION}:123456789012:log-group:{GROUP}:log-stream:{ssm_session_id(cw)}"
    assert log.path == session.recording_path.removesuffix(".cast") + ".cloudwatch.cast"
    assert not SessionLog.objects.filter(session=session, kind=Kind.SSM_S3).exists()  # no bucket: no S3 log awaited
    stream_to(cw, session, SESSION)

    assert recordings.store_session_logs(session.pk) == 2  # the portal's recording and the stream
    log.refresh_from_db()
    assert (log.state, log.last_error, log.attempts) == (State.STORED, "", 0)
    stored = (settings.RECORDINGS_DIR / log.path).read_bytes()
    assert log.size == len(stored) and files_under(settings.RECORDINGS_SPOOL_DIR) == []
    with open_recording(session, kind="ssm_cloudwatch") as handle:
        assert handle.read() == stored

    # An asciicast v2 recording that starts with the session, one output event per CloudWatch event, at its time.
    header, events = cast_events(stored)
    assert header["version"] == 2 and header["timestamp"] == int(session.started_at.timestamp())
    assert header["title"] == f"{session.posix_username}@hpc (CloudWatch Logs)"
    assert [(t, kind) for t, kind, _ in events] == [(1.25, "o"), (4.5, "o"), (6.75, "o"), (9.0, "o")]
    assert events[0][2] == "bob@head:~$ echo hi; ls /tmp\r\nhi\r\nslurm-spool  results-2026.csv\r\n"

    # Read as the cluster's auditor.
    assert [call["RoleSessionName"] for call in sts_calls] == [aws.auditor_subject(cw.hpc)]

    # Indexed under its own kind, found with its time (the playback link plays the stream from there).
    assert log.index_state == IndexState.INDEXED and log.indexed_lines == 8, (log.index_state, log.index_note)
    [hit] = search("rm -rf /fsx", SessionFilter(tenant_id=cw.acme.pk)).hits
    assert (hit.session_id, hit.log_kind, hit.kind) == (session.pk, "ssm_cloudwatch", "command")
    assert hit.text == "bob@head:~$ rm -rf /fsx/scratch/bob/tmp" and hit.offset == 4.5
    [output] = search("results-2026", SessionFilter(tenant_id=cw.acme.pk)).hits
    assert (output.kind, output.offset) == ("output", 1.25)  # a line of a multi-line event: that event's time
    assert found(cw.acme, "--mem=64G") == {str(session.pk)} and found(cw.other, "--mem=64G") == set()
    assert recordings.store_session_logs(session.pk) == 0  # done

    # The pages: the hit opens the stream at its time; the stream plays and downloads; each fetch is an audited view.
    client = Client()
    client.force_login(cw.alice)
    page = client.get("/t/acme/admin/activity/", {"q": "rm -rf /fsx"}).content.decode()
    assert f"/t/acme/audit/sessions/{session.pk}/?t=4.5&amp;log=cloudwatch" in page and "CloudWatch log</span>" in page
    playback = client.get(f"/t/acme/audit/sessions/{session.pk}/", {"t": "4.5", "log": "cloudwatch"}).content.decode()
    assert f'data-src="/t/acme/audit/sessions/{session.pk}/cloudwatch.cast"' in playback and 'data-start="4.5"' in playback
    assert "Play the portal's recording" in playback
    default = client.get(f"/t/acme/audit/sessions/{session.pk}/").content.decode()
    assert f'data-src="/t/acme/audit/sessions/{session.pk}/recording.cast"' in default and "?log=cloudwatch" in default
    response = client.get(f"/t/acme/audit/sessions/{session.pk}/cloudwatch.cast")
    assert response["Content-Type"] == "application/x-asciicast" and b"".join(response.streaming_content) == stored
    assert AuditEvent.objects.get(action="recording.view").data["log_kind"] == "ssm_cloudwatch"
    # Without a readable recording of its own, the page plays the stream.
    SessionLog.objects.filter(session=session, kind=Kind.ASCIICAST).update(state=State.MISSING)
    fallback = client.get(f"/t/acme/audit/sessions/{session.pk}/").content.decode()
    assert f'data-src="/t/acme/audit/sessions/{session.pk}/cloudwatch.cast"' in fallback
    assert "The portal's recording is missing." in fallback


def test_the_stream_is_read_page_by_page_until_the_token_repeats(cw, settings, monkeypatch):
    monkeypatch.setattr(cloudwatch, "PAGE_EVENTS", 2)
    session = streamed_session(cw)
    lines = [(0.5 + i, [f"bob@head:~$ echo line-{i}", f"line-{i}"]) for i in range(7)]
    stream_to(cw, session, [lines[:3], lines[3:]])
    calls = []
    real = cloudwatch.events

    def counted(client, group, stream):
        client.meta.events.register("before-parameter-build.cloudwatch-logs.GetLogEvents",
                                    lambda params, **kwargs: calls.append(dict(params)))
        return real(client, group, stream)

    monkeypatch.setattr(cloudwatch, "events", counted)
    recordings.store_session_logs(session.pk)
    log = cw_log(session)
    assert log.state == State.STORED, log.last_error
    # 7 events, 2 a page: 4 pages, then one more that hands back the same token (the end).
    assert len(calls) == 5 and "nextToken" not in calls[0] and all(call["limit"] == 2 for call in calls)
    tokens = [call["nextToken"] for call in calls[1:]]
    assert len(set(tokens)) == 4 and calls[0]["startFromHead"] is True
    _, events = cast_events((settings.RECORDINGS_DIR / log.path).read_bytes())
    assert [text for _, _, text in events] == [f"bob@head:~$ echo line-{i}\r\nline-{i}\r\n" for i in range(7)]
    assert [t for t, _, _ in events] == [0.5 + i for i in range(7)]


def test_a_stream_that_never_comes_is_late_then_missing(cw):
    session = streamed_session(cw)
    recordings.store_session_logs(session.pk)
    log = cw_log(session)
    assert log.state == State.AWAITED and log.attempts == 1 and "is not there yet" in log.last_error
    assert not AuditEvent.objects.filter(action__startswith="terminal.session.log_").exists()
    _, missing = late_then_missing(session, CW)
    assert "is not there yet" in missing.data["error"]

    client = Client()
    client.force_login(cw.bob)
    page = client.get(f"/t/acme/audit/sessions/{session.pk}/").content.decode()
    assert 'flag-problem">CloudWatch log: Missing' in page and "CloudWatch Logs stream: missing" in page


def test_a_log_group_that_does_not_exist_is_an_answer_too(cw):
    cw.logs.delete_log_group(logGroupName=GROUP)
    session = streamed_session(cw)
    ended_ago(session, CW, hours=25)
    recordings.sweep()
    log = cw_log(session)
    assert log.state == State.MISSING
    assert "does not exist" in AuditEvent.objects.get(action="terminal.session.log_missing").data["error"]


def test_a_stream_that_comes_late_is_still_fetched(cw):
    session = streamed_session(cw)
    ended_ago(session, CW, minutes=20)
    recordings.sweep()
    assert cw_log(session).state == State.LATE
    stream_to(cw, session, SESSION)
    ended_ago(session, CW, minutes=30)
    recordings.sweep()
    assert cw_log(session).state == State.STORED
    assert found(cw.acme, "rm -rf /fsx") == {str(session.pk)}
    assert AuditEvent.objects.filter(action="terminal.session.log_late").count() == 1


def _access_denied(**kwargs):
    """A botocore before-call handler: AWS's answer to a caller whose policy does not allow the call."""
    message = "User: arn:aws:sts::123456789012:assumed-role/ClusterraShell/x is not authorized to perform this action"
    return AWSResponse("https://logs.eu-west-1.amazonaws.com/", 400, {}, None), {
        "Error": {"Code": "AccessDeniedException", "Message": message}, "ResponseMetadata": {"HTTPStatusCode": 400}}


@pytest.mark.parametrize("failure", ["access_denied", "unreachable"])
def test_a_log_group_that_cannot_be_read_keeps_the_log_late_not_missing(cw, monkeypatch, request, failure):
    if failure == "unreachable":
        closed = request.getfixturevalue("s3_closed_port")
        Cluster.objects.filter(pk=cw.hpc.pk).update(backend_settings={**CW_SETTINGS, "endpoint_urls": {"logs": closed}})
    else:
        real = aws._create_client

        def refusing(service, **kwargs):
            client = real(service, **kwargs)
            if service == "logs":
                client.meta.events.register("before-call.cloudwatch-logs", _access_denied)
            return client

        monkeypatch.setattr(aws, "_create_client", refusing)
    session = streamed_session(cw)
    stream_to(cw, session, SESSION)  # there, but the portal cannot read it
    ended_ago(session, CW, hours=30)
    recordings.sweep()
    log = cw_log(session)
    expected = "Could not connect" if failure == "unreachable" else "AccessDenied"
    assert log.state == State.LATE and expected in log.last_error and log.retry_at > timezone.now(), log.last_error
    assert AuditEvent.objects.filter(action="terminal.session.log_late").count() == 1
    assert not AuditEvent.objects.filter(action="terminal.session.log_missing").exists()


def test_a_stream_still_being_written_is_left_until_it_is_quiet(cw, monkeypatch):
    monkeypatch.setattr(cloudwatch, "QUIET", timedelta(seconds=60))
    session = streamed_session(cw)
    log = cw_log(session)
    assert timedelta(seconds=55) < log.retry_at - session.ended_at < timedelta(seconds=65)  # not asked for at once
    stream_to(cw, session, SESSION)  # written just now
    ended_ago(session, CW, minutes=2)
    recordings.sweep()
    log = cw_log(session)
    assert log.state == State.AWAITED and "still being written to" in log.last_error
    assert not (recordings.spool_path(log.path)).exists()
    monkeypatch.setattr(cloudwatch, "QUIET", timedelta(0))  # as if a minute went by without a write
    ended_ago(session, CW, minutes=3)
    recordings.sweep()
    assert cw_log(session).state == State.STORED


@pytest.mark.parametrize("limit", ["bytes", "pages"])
def test_a_stream_too_large_to_fetch_is_rejected_and_flagged(cw, settings, monkeypatch, limit):
    if limit == "bytes":
        settings.RECORDINGS_MAX_BYTES = 1024
        batches = [[(float(i), ["x" * 300]) for i in range(5)]]
    else:
        monkeypatch.setattr(cloudwatch, "PAGE_EVENTS", 1)
        monkeypatch.setattr(cloudwatch, "MAX_PAGES", 2)
        batches = SESSION
    session = streamed_session(cw)
    stream_to(cw, session, batches)
    recordings.store_session_logs(session.pk)
    log = cw_log(session)
    assert log.state == State.REJECTED and log.index_state == IndexState.SKIPPED
    assert files_under(settings.RECORDINGS_SPOOL_DIR) == [] and not (settings.RECORDINGS_DIR / log.path).exists()
    [event] = AuditEvent.objects.filter(action="terminal.session.log_rejected")
    assert event.data["kind"] == "ssm_cloudwatch" and event.data["size"] == log.size
    if limit == "bytes":
        assert "CLUSTERRA_RECORDINGS_MAX_BYTES (1024)" in log.last_error and log.size > 1024
    else:
        assert "more than 2 pages" in log.last_error


def test_no_stream_is_awaited_without_a_log_group_or_a_valid_session_id(cw):
    bad = streamed_session(cw, ssm_id="../../etc/passwd")
    assert not SessionLog.objects.filter(session=bad, kind=Kind.SSM_CLOUDWATCH).exists()
    Cluster.objects.filter(pk=cw.hpc.pk).update(backend_settings=SSM_SETTINGS)  # a bucket, no log group
    s3_only = streamed_session(cw)
    assert {log.kind for log in s3_only.logs.all()} == {"asciicast", "ssm_s3"}
    Cluster.objects.filter(pk=cw.hpc.pk).update(backend_settings=SSM_SETTINGS | {"cloudwatch_log_group": GROUP})
    both = streamed_session(cw)
    assert {log.kind for log in both.logs.all()} == {"asciicast", "ssm_s3", "ssm_cloudwatch"}


def test_events_become_a_recording_whatever_their_shape():
    """write_cast on its own: times from eventTime with the timestamp's milliseconds when they agree, never going
    back; plain-text messages; junk in sessionData skipped; the result parsed as the search parses it."""
    from datetime import UTC, datetime

    start = datetime(2026, 12, 2, 4, 5, 0, tzinfo=UTC)
    ms = int(start.timestamp() * 1000)

    def message(event_time, lines):
        return json.dumps({"eventVersion": "1.0", "eventTime": event_time, "sessionData": lines})

    items = [
        {"timestamp": ms + 6_250, "message": message("2026-12-02T04:05:06Z", ["$ echo one", "one"])},  # +6.25
        {"timestamp": ms + 99_000, "message": message("2026-12-02T04:05:08Z", ["$ echo two"])},  # stamp disagrees: +8
        {"timestamp": ms + 7_000, "message": message("2026-12-02T04:05:07Z", ["two", 42, None])},  # clock stepped back
        {"timestamp": ms + 12_500, "message": "plain text\nuploaded at the end\n"},  # not the agent's JSON
        {"message": message("not a time", ["$ echo three"])},  # no time at all: the previous one
    ]
    out = io.BytesIO()
    written = cloudwatch.write_cast(items, out, started_at=start, title="t", limit=1 << 20)
    data = out.getvalue()
    assert written == len(data)
    _, events = cast_events(data)
    assert [(t, text) for t, _, text in events] == [
        (6.25, "$ echo one\r\none\r\n"), (8.0, "$ echo two\r\n"), (8.0, "two\r\n"),
        (12.5, "plain text\r\nuploaded at the end\r\n"), (12.5, "$ echo three\r\n")]
    transcript = transcribe(data, "ssm_cloudwatch")
    assert transcript.complete
    assert [(line.text, line.offset) for line in transcript.lines] == [
        ("$ echo one", 6.25), ("one", 6.25), ("$ echo two", 8.0), ("two", 8.0), ("plain text", 12.5),
        ("uploaded at the end", 12.5), ("$ echo three", 12.5)]
    with pytest.raises(cloudwatch.StreamTooLarge) as too_large:
        cloudwatch.write_cast(items, io.BytesIO(), started_at=start, title="t", limit=100)
    assert too_large.value.size > 100
