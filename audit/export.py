"""Events as JSON lines or CSV, oldest first (the chain's order), one row a line, generated as they are read.

Each row carries the chain fields (`sequence`, `prev_hash`, `hash`: audit/chain.py), so an auditor can
check the exported run of events for gaps and reordering. JSON lines are exact. In CSV, a text cell that
a spreadsheet would run as a formula (starting with = + - @, a tab or a carriage return) gets a leading
apostrophe (OWASP's advice against CSV injection: terminal text and job names come from users).
"""

import csv
import io
from collections.abc import Iterable, Iterator

import orjson

from audit.models import AuditEvent

FIELDS = ["id", "tenant", "sequence", "prev_hash", "hash", "created_at", "actor_id", "actor", "action",
          "target_type", "target_id", "client_address", "data"]
FORMATS = {"jsonl": "application/x-ndjson; charset=utf-8", "csv": "text/csv; charset=utf-8"}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def event_row(event: AuditEvent, tenant_slug: str) -> dict:
    return {
        "id": event.pk,
        "tenant": tenant_slug,
        "sequence": event.sequence,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
        "created_at": event.created_at.isoformat(),
        "actor_id": event.actor_id,
        "actor": event.actor_label,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "client_address": event.client_address,
        "data": event.data,
    }


def lines(events: Iterable[AuditEvent], tenant_slug: str, export_format: str) -> Iterator[bytes]:
    rows = (event_row(event, tenant_slug) for event in events)
    if export_format == "jsonl":
        for row in rows:
            yield orjson.dumps(row) + b"\n"
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS)
    writer.writeheader()
    for row in rows:  # the header goes out with the first row, or alone below
        row["data"] = orjson.dumps(row["data"]).decode()
        writer.writerow({k: _csv_safe(v) for k, v in row.items()})
        yield buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue().encode()


def _csv_safe(value):
    return f"'{value}" if isinstance(value, str) and value.startswith(_FORMULA_START) else value
