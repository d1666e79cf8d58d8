"""Search what sessions showed: the lines of the indexed session logs (audit/indexing.py) that contain a text.

    page = search("rm -rf /fsx", SessionFilter(tenant_id=tenant.pk, user_id=None), limit=50)
    page.hits        # newest session first, then in the order of the session's lines
    page.next_cursor # pass back as cursor= for the next page; None on the last page

The query is literal text, matched case-insensitively within one line. The full-text index finds the
chunks that may hold it — SQLite FTS5 with the trigram tokenizer (every three-character piece of the query
must be in the chunk), PostgreSQL pg_trgm with ILIKE — and each line is then checked here. Chunk ids run
newest session first (audit/indexing.py), so both databases read the candidates in result order and stop
once the page is full.
"""

import hashlib
import re
import uuid
from array import array
from dataclasses import dataclass
from datetime import datetime

from django.core import signing
from django.db import connection

from audit.indexing import PLACE_BITS, SLOT_BITS
from audit.models import TranscriptChunk
from audit.transcript import COMMAND, OUTPUT

MIN_QUERY_LENGTH = 3
MAX_QUERY_LENGTH = 200
MAX_LIMIT = 500
MAX_TERMS = 16  # trigrams of a long query given to FTS5: enough to narrow it down, few enough to stay fast
SECOND = 1 << (SLOT_BITS + PLACE_BITS)
SPILL = 64  # seconds: how far past its start second a log's key may be (indexing._source)
_CURSOR_SALT = "audit.search.cursor"


class SearchQueryError(ValueError):
    """The query, a filter or the cursor cannot be used; the message says why, for the person searching."""


@dataclass(frozen=True)
class SessionFilter:
    tenant_id: int  # required: never search across tenants
    user_id: int | None = None  # a member: always their own id; an admin: None or a chosen person
    cluster_id: int | None = None
    started_after: datetime | None = None
    started_before: datetime | None = None
    end_reason: str | None = None


@dataclass(frozen=True)
class Hit:
    session_id: uuid.UUID
    log_kind: str  # "asciicast" | "ssm_s3" | "ssm_cloudwatch"
    offset: float | None  # seconds from session start; None for the SSM agent's S3 log (no timing)
    kind: str  # "output" | "command"
    text: str  # the whole line
    spans: tuple[tuple[int, int], ...]  # where the query matches inside text (for highlighting)


@dataclass(frozen=True)
class SearchPage:
    hits: list[Hit]
    next_cursor: str | None  # opaque, pass back as cursor=


def search(query: str, filters: SessionFilter, *, cursor: str | None = None, limit: int = 50) -> SearchPage:
    _check(query, filters, limit)
    pattern = re.compile(re.escape(query), re.IGNORECASE)
    fingerprint = _fingerprint(query, filters)
    before, skip_lines = _read_cursor(cursor, fingerprint) if cursor else (None, -1)
    hits: list[tuple[int, int, Hit]] = []
    for row in _chunks(query, filters, before, limit + 1):
        chunk, session_id, log_kind, text, offsets, kinds = row
        times = array("I", bytes(offsets)) if offsets else None
        line, line_start, line_end = 0, 0, text.find("\n")
        spans: list[tuple[int, int]] = []
        for match in pattern.finditer(text):
            while line_end != -1 and match.start() > line_end:  # the match is on a later line
                if spans:
                    hits.append(_hit(chunk, line, text[line_start:line_end], spans, session_id, log_kind, times, kinds))
                    spans = []
                line, line_start = line + 1, line_end + 1
                line_end = text.find("\n", line_start)
            if not (chunk == before and line <= skip_lines):
                spans.append((match.start() - line_start, match.end() - line_start))
        if spans:
            hits.append(_hit(chunk, line, text[line_start:None if line_end == -1 else line_end], spans, session_id,
                             log_kind, times, kinds))
        if len(hits) > limit:
            break
    page = [hit for _, _, hit in hits[:limit]]
    if len(hits) <= limit:
        return SearchPage(page, None)
    chunk, line, _ = hits[limit - 1]
    return SearchPage(page, signing.dumps([chunk, line, fingerprint], salt=_CURSOR_SALT))


def _hit(chunk, line, text, spans, session_id, log_kind, times, kinds) -> tuple[int, int, Hit]:
    offset = None if times is None else times[line] / 1000
    kind = COMMAND if kinds[line] == "c" else OUTPUT
    return chunk, line, Hit(uuid.UUID(str(session_id)), log_kind, offset, kind, text, tuple(spans))


def _check(query: str, filters: SessionFilter, limit: int):
    if not isinstance(query, str) or len(query) < MIN_QUERY_LENGTH or not query.strip():
        raise SearchQueryError(f"Search for at least {MIN_QUERY_LENGTH} characters.")
    if len(query) > MAX_QUERY_LENGTH:
        raise SearchQueryError(f"Search for at most {MAX_QUERY_LENGTH} characters.")
    if not query.isprintable():
        raise SearchQueryError("Search for text on one line, without control characters.")
    if not isinstance(filters.tenant_id, int):
        raise SearchQueryError("A search is always within one tenant.")
    if not 1 <= limit <= MAX_LIMIT:
        raise SearchQueryError(f"Ask for 1 to {MAX_LIMIT} hits at a time.")
    if filters.started_after and filters.started_before and filters.started_after >= filters.started_before:
        raise SearchQueryError("The time range is empty.")


def _fingerprint(query: str, filters: SessionFilter) -> str:
    """Ties a cursor to its search: a cursor of another search would skip lines of this one."""
    return hashlib.sha256(repr((query.casefold(), filters)).encode()).hexdigest()[:16]


def _read_cursor(cursor: str, fingerprint: str) -> tuple[int, int]:
    try:
        chunk, line, made_for = signing.loads(cursor, salt=_CURSOR_SALT)
    except (signing.BadSignature, TypeError, ValueError):
        raise SearchQueryError("This page link is not valid: start the search again.") from None
    if made_for != fingerprint or not isinstance(chunk, int) or not isinstance(line, int):
        raise SearchQueryError("This page link belongs to another search: start the search again.")
    return chunk, line


def _range(filters: SessionFilter, before: int | None) -> tuple[int, int]:
    """Chunk ids that can belong to sessions started in the filters' time range (ids < high)."""
    low = int(filters.started_after.timestamp()) * SECOND if filters.started_after else 0
    high = (int(filters.started_before.timestamp()) + 1 + SPILL) * SECOND if filters.started_before else (1 << 63) - 1
    if before is not None:
        high = min(high, before + 1)  # the cursor's chunk again: the lines after the cursor's
    return low, high


def _conditions(filters: SessionFilter) -> tuple[list[str], list]:
    where, params = ["tenant_id = %s"], [filters.tenant_id]
    for column in ("user_id", "cluster_id", "end_reason"):
        value = getattr(filters, column)
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    if filters.started_after:
        where.append("session_started_at >= %s")
        params.append(connection.ops.adapt_datetimefield_value(filters.started_after))
    if filters.started_before:
        where.append("session_started_at < %s")
        params.append(connection.ops.adapt_datetimefield_value(filters.started_before))
    return where, params


_COLUMNS = "id, session_id, log_kind, text, offsets, kinds"
_TABLE = TranscriptChunk._meta.db_table


def _chunks(query: str, filters: SessionFilter, before: int | None, want: int):
    """The chunks that may hold the query, in result order (ids descending), a batch at a time while asked for;
    `want` (how many hits a page needs) only sizes the batches."""
    low, high = _range(filters, before)
    where, params = _conditions(filters)
    where = " AND ".join(where)
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            yield from _sqlite_chunks(cursor, _match(query, filters), where, params, low, high, want)
        else:
            yield from _postgresql_chunks(cursor, _like(query), where, params, low, high, want)


def _sqlite_chunks(cursor, match: str, where: str, params: list, low: int, high: int, want: int):
    """FTS5 reads its matches in rowid order: the newest first, as many as asked for."""
    batch = max(want, 16)
    while high > low:
        cursor.execute("SELECT rowid FROM audit_transcript_fts WHERE audit_transcript_fts MATCH %s AND rowid >= %s "
                       "AND rowid < %s ORDER BY rowid DESC LIMIT %s", [match, low, high, batch])
        ids = [row[0] for row in cursor.fetchall()]
        if not ids:
            return
        marks = ", ".join(["%s"] * len(ids))
        cursor.execute(f"SELECT {_COLUMNS} FROM {_TABLE} WHERE id IN ({marks}) AND {where} ORDER BY id DESC",  # noqa: S608 (names)
                       [*ids, *params])
        yield from cursor.fetchall()
        if len(ids) < batch:
            return
        high, batch = ids[-1], min(batch * 4, 4096)


WINDOW = 256  # chunks read in order on PostgreSQL before choosing how to go on
SCAN_LIMIT = 4096  # at most this many more chunks read in order; past that, the trigram index is cheaper


def _postgresql_chunks(cursor, like: str, where: str, params: list, low: int, high: int, want: int):
    """Two ways, chosen as it goes, because PostgreSQL cannot estimate how common a text is (it guesses rare).

    Reading the chunks in order (an index on tenant and id) and checking each costs the chunks read: right
    for a common text. The trigram index finds every chunk that may match, which must all be read to be
    sorted: right for a rare one. So: read a window in order; no match there means a rare text, a few mean
    one that would take long to read in order: the index from there on.
    """
    window, seen, found = WINDOW, 0, 0
    while high > low:
        cursor.execute(
            f"SELECT {_COLUMNS}, hit FROM (SELECT {_COLUMNS}, text ILIKE %s AS hit FROM {_TABLE} WHERE {where} "  # noqa: S608 (names)
            "AND id >= %s AND id < %s ORDER BY id DESC LIMIT %s) recent", [like, *params, low, high, window])
        rows = cursor.fetchall()
        hits = [row[:-1] for row in rows if row[-1]]
        yield from hits
        if len(rows) < window:
            return
        high = rows[-1][0]
        seen, found = seen + len(rows), found + len(hits)
        more = want - found
        if found == 0 or more * seen / found > SCAN_LIMIT:
            break
        window = min(SCAN_LIMIT, max(WINDOW, int(more * seen / found * 1.5)))
    batch = max(want, 16)
    while high > low:
        cursor.execute(f"SELECT {_COLUMNS} FROM {_TABLE} WHERE {where} AND id >= %s AND id < %s AND text ILIKE %s "  # noqa: S608 (names)
                       "ORDER BY id DESC LIMIT %s", [*params, low, high, like, batch])
        rows = cursor.fetchall()
        yield from rows
        if len(rows) < batch:
            return
        high, batch = rows[-1][0], min(batch * 4, 4096)


def _like(query: str) -> str:
    return "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _match(query: str, filters: SessionFilter) -> str:
    """An FTS5 query: every three-character piece of the query (each an FTS5 string, so nothing in it is
    syntax), and the filters' scope tokens (the migration's trigger writes them)."""
    pieces = list(dict.fromkeys(query[i:i + 3] for i in range(len(query) - 2)))
    if len(pieces) > MAX_TERMS:
        step = (len(pieces) - 1) / (MAX_TERMS - 1)
        pieces = [pieces[round(i * step)] for i in range(MAX_TERMS)]
    scope = [f"⁅t{filters.tenant_id}⁆"]
    if filters.user_id is not None:
        scope.append(f"⁅u{filters.user_id}⁆")
    if filters.cluster_id is not None:
        scope.append(f"⁅c{filters.cluster_id}⁆")
    for token in scope:
        pieces += [token[i:i + 3] for i in range(len(token) - 2)]
    return " AND ".join('"' + piece.replace('"', '""') + '"' for piece in pieces)
