"""The search index of session logs: what each session showed, in TranscriptChunk rows (audit/search.py reads them).

    result = index_recording(session, file, log_kind="asciicast")   # or "ssm_s3", "ssm_cloudwatch"; bytes or a binary file

Indexing a log again replaces its rows. A corrupt or truncated log is indexed as far as it can be read,
and the result says so (complete=False, note); only a database error raises.

Chunk ids order the search's results without sorting: a log's key holds its session's start in seconds
and a slot for the logs that started in the same second, and its chunks count down from there, so that
ids descending give the newest session first and each session's lines in order.
"""

from array import array
from dataclasses import dataclass

from django.db import IntegrityError, transaction

from audit import transcript
from audit.models import TranscriptChunk, TranscriptSource

CHUNK_LINES = 64
CHUNK_CHARS = 4096
MAX_LINE = 65536  # longer lines are cut into pieces of this many characters
BATCH = 256  # chunks written in one transaction, so that other writers of an SQLite file get their turn
SLOT_BITS, PLACE_BITS = 8, 22
MAX_CHUNKS = 1 << PLACE_BITS


@dataclass
class IndexResult:
    lines: int
    chunks: int
    bytes: int
    complete: bool
    note: str


def chunk_id(key: int, place: int) -> int:
    """Counting down within the source's range: descending ids keep a session's chunks in order."""
    return key | (MAX_CHUNKS - 1 - place)


def _source(session, log_kind: str) -> TranscriptSource:
    """The log's source row, with a key of its own (a free slot of its start second) the first time."""
    second = int(session.started_at.timestamp())
    for _ in range(64):
        existing = TranscriptSource.objects.filter(session=session, log_kind=log_kind).first()
        if existing is not None:
            return existing
        low, high = second << (SLOT_BITS + PLACE_BITS), (second + 1) << (SLOT_BITS + PLACE_BITS)
        used = set(TranscriptSource.objects.filter(key__gte=low, key__lt=high).values_list("key", flat=True))
        free = [key for key in range(low, high, MAX_CHUNKS) if key not in used]
        if not free:  # 256 logs started in that second: the next second's slots (search allows for it)
            second += 1
            continue
        try:
            with transaction.atomic():
                return TranscriptSource.objects.create(session=session, log_kind=log_kind, key=free[0])
        except IntegrityError:  # another indexer took that slot, or is indexing this very log
            continue
    raise RuntimeError(f"No free index slot for session {session.pk}")


class _Writer:
    """Turns transcript lines into chunk rows and writes them a batch at a time."""

    def __init__(self, session, log_kind: str, key: int):
        self.key = key
        self.common = dict(
            session_id=session.pk, log_kind=log_kind, tenant_id=session.cluster.tenant_id, user_id=session.user_id,
            cluster_id=session.cluster_id, session_started_at=session.started_at, end_reason=session.end_reason or "",
        )
        self.rows: list[TranscriptChunk] = []
        self.lines: list[transcript.TranscriptLine] = []
        self.size = 0
        self.chunks = 0
        self.line_count = 0
        self.full = False

    def add(self, lines):
        for line in lines:
            text = line.text
            pieces = [text] if len(text) <= MAX_LINE else [text[i:i + MAX_LINE] for i in range(0, len(text), MAX_LINE)]
            for piece in pieces:
                if self.lines and (len(self.lines) >= CHUNK_LINES or self.size + len(piece) > CHUNK_CHARS):
                    self._chunk()
                self.lines.append(line if piece is text else line._replace(text=piece))
                self.size += len(piece) + 1
            self.line_count += 1

    def _chunk(self):
        if self.chunks >= MAX_CHUNKS:
            self.full = True
        else:
            lines = self.lines
            offsets = b"" if lines[0].offset is None else array("I", [min(round(line.offset * 1000), 0xFFFFFFFF)
                                                                      for line in lines]).tobytes()
            self.rows.append(TranscriptChunk(
                id=chunk_id(self.key, self.chunks), text="\n".join(line.text for line in lines), offsets=offsets,
                kinds="".join("c" if line.kind == transcript.COMMAND else "o" for line in lines), **self.common))
            self.chunks += 1
            if len(self.rows) >= BATCH:
                self.flush()
        self.lines, self.size = [], 0

    def flush(self):
        if self.rows:
            with transaction.atomic():
                TranscriptChunk.objects.bulk_create(self.rows)
            self.rows = []

    def close(self):
        if self.lines:
            self._chunk()
        self.flush()


def index_recording(session, data_or_file, *, log_kind: str) -> IndexResult:
    """Index one log of `session` (bytes or a binary file), replacing what was indexed of it before."""
    if log_kind not in transcript.LOG_KINDS:
        raise ValueError(f"Unknown log kind {log_kind!r}")
    source = _source(session, log_kind)
    TranscriptChunk.objects.filter(pk__gte=source.key, pk__lt=source.key + MAX_CHUNKS).delete()
    writer = _Writer(session, log_kind, source.key)
    result = transcript.Transcript()
    for lines in transcript.stream(data_or_file, log_kind, result):
        writer.add(lines)
    writer.close()
    if writer.full:
        result.flag(f"only the first {MAX_CHUNKS} chunks of lines were indexed")
    return IndexResult(lines=writer.line_count, chunks=min(writer.chunks, MAX_CHUNKS), bytes=result.bytes,
                       complete=result.complete, note=result.note)


def delete_session_index(session_id, log_kind: str | None = None) -> int:
    """Remove a session's indexed logs (one kind, or all); returns how many chunks went."""
    chunks = TranscriptChunk.objects.filter(session_id=session_id)
    sources = TranscriptSource.objects.filter(session_id=session_id)
    if log_kind is not None:
        chunks, sources = chunks.filter(log_kind=log_kind), sources.filter(log_kind=log_kind)
    with transaction.atomic():  # one DELETE each; on SQLite a trigger takes the rows out of the full-text index
        deleted, _ = chunks.delete()
        sources.delete()
    return deleted
