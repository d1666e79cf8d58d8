"""An SSM session's CloudWatch Logs stream, read back as an asciicast v2 recording.

With `cloudwatch_log_group` in a cluster's settings, its session document has the SSM agent stream each session's
output, while the session runs, into the log stream named after the SSM session id (`cloudWatchStreamingEnabled`).
Each event's message is the agent's JSON `CloudWatchMessage`:

    {"eventVersion": "1.0", "eventTime": "2026-12-02T04:05:06Z", "awsRegion": "eu-west-1", "target": {"id": "i-…"},
     "userIdentity": {"arn": "…"}, "runAsUser": "bob", "sessionId": "…", "sessionData": ["line", …]}

holding the lines the session printed since the agent's previous upload (it uploads every second; control characters
cleaned on Linux, carriage returns dropped, tabs made spaces, up to about 200 KB an event). terminal/recordings.py
fetches the stream once the session has ended and `write_cast` turns it into an asciicast recording in the spool: one
output event per CloudWatch event, at its time into the session, each line ending in CRLF. So it plays in the same
player as the portal's own recording and is indexed by the same parser (audit/transcript.py), with the timing that
the S3 log lacks.
"""

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import BinaryIO

import orjson

from audit.transcript import SSM_DEFAULT_SIZE
from clusters.aws import SsmSettings
from terminal import recording

# The agent uploads every second and retries a failed upload; a stream written to this recently may still grow, so
# it is read this long after the session's end at the earliest, and only once nothing was added to it for as long.
QUIET = timedelta(seconds=60)
MAX_PAGES = 10_000  # GetLogEvents pages read for one stream at most (each up to 1 MB or 10,000 events)
PAGE_EVENTS = 10_000  # events asked for per page: the service's maximum
NOT_FOUND = frozenset({"ResourceNotFoundException"})  # the only answer that says a log group or stream is not there


class StreamTooLarge(Exception):
    """The stream is too large to fetch: `size` bytes of recording were written before giving up; str() says why."""

    def __init__(self, reason: str, size: int | None = None):
        super().__init__(reason)
        self.size = size


def stream_arn(s: SsmSettings, ssm_session_id: str) -> str:
    """The ARN of the log stream the agent writes an SSM session to (SessionLog.source)."""
    return f"{s.log_group_arn()}:log-stream:{ssm_session_id}"


def parse_stream_arn(arn: str) -> tuple[str, str]:
    """(log group name, log stream name) of a stream_arn. Neither name can hold ':'."""
    group_arn, _, stream = arn.partition(":log-stream:")
    return group_arn.partition(":log-group:")[2], stream


def find_stream(client, group: str, stream: str) -> dict | None:
    """The stream's description (DescribeLogStreams), or None when the group has no such stream. A group that does
    not exist raises ResourceNotFoundException."""
    answer = client.describe_log_streams(logGroupName=group, logStreamNamePrefix=stream)
    # Listed by name, so the stream itself comes before any whose name merely starts with it.
    return next((found for found in answer.get("logStreams", []) if found.get("logStreamName") == stream), None)


def idle_for(description: dict, now: datetime) -> timedelta | None:
    """How long ago the stream was last written to; None when it has no events."""
    last = description.get("lastIngestionTime")
    return now - datetime.fromtimestamp(last / 1000, UTC) if isinstance(last, int | float) else None


def events(client, group: str, stream: str) -> Iterator[dict]:
    """The stream's events from its start: GetLogEvents, following nextForwardToken until it comes back unchanged (the
    end; pages may be empty before it), for at most MAX_PAGES pages (StreamTooLarge after that)."""
    token = None
    for _ in range(MAX_PAGES):
        params = {"logGroupName": group, "logStreamName": stream, "startFromHead": True, "limit": PAGE_EVENTS}
        if token is not None:
            params["nextToken"] = token
        page = client.get_log_events(**params)
        yield from page.get("events") or ()
        following = page.get("nextForwardToken")
        if not following or following == token:
            return
        token = following
    raise StreamTooLarge(f"has more than {MAX_PAGES} pages of events (GetLogEvents)")


def write_cast(stream_events: Iterable[dict], out: BinaryIO, *, started_at: datetime, title: str, limit: int) -> int:
    """Write the events into `out` as an asciicast v2 recording that starts at `started_at` (the session's start);
    returns the bytes written. StreamTooLarge once it is over `limit` bytes."""
    start = started_at.timestamp()
    cols, rows = SSM_DEFAULT_SIZE  # the stream does not say; lines are already split, so width only affects playback
    written = out.write(recording.header(cols=cols, rows=rows, timestamp=int(start), title=title))
    elapsed = 0.0
    try:
        for item in stream_events:
            lines, at = _lines(item)
            if at is not None:  # never going back: the agent's clock may step, the events stay in order
                elapsed = max(elapsed, round(at - start, 3))
            if lines:
                written += out.write(recording.event(elapsed, "o", "".join(line + "\r\n" for line in lines)))
                if written > limit:
                    raise StreamTooLarge(f"is over CLUSTERRA_RECORDINGS_MAX_BYTES ({limit}) as a recording", written)
    except StreamTooLarge as exc:
        exc.size = exc.size or written
        raise
    return written


def _lines(item: dict) -> tuple[list[str], float | None]:
    """One event's lines and when they were printed (seconds since the epoch, None if it does not say)."""
    stamp = item.get("timestamp")  # milliseconds, taken by the agent as it built the message
    stamp = stamp / 1000 if isinstance(stamp, int | float) and not isinstance(stamp, bool) else None
    text = item.get("message")
    text = text if isinstance(text, str) else ""
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        message = None
    if isinstance(message, dict) and isinstance(message.get("sessionData"), list):
        return [line for line in message["sessionData"] if isinstance(line, str)], _event_time(message.get("eventTime"), stamp)
    # Not the agent's JSON (a document without cloudWatchStreamingEnabled uploads plain text when the session ends).
    lines = text.replace("\r\n", "\n").split("\n")
    return (lines[:-1] if lines and lines[-1] == "" else lines), stamp


def _event_time(value, stamp: float | None) -> float | None:
    """eventTime (RFC 3339, whole seconds); the event's own timestamp, taken at the same moment, adds the milliseconds."""
    try:
        when = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        when = None
    if when is None:
        return stamp
    seconds = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    return stamp if stamp is not None and seconds <= stamp < seconds + 1 else seconds
