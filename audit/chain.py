"""The audit hash chain: sealing events into their tenant's chain, and verifying a chain.

Why sealing after commit: an event is written inside the caller's transaction (an offboarding, a
SCIM request), and chaining it there would hold the chain's lock until that transaction ends — every
other writer of the tenant would wait, and two transactions writing to two chains in opposite order
would deadlock. So `record_event` inserts the event unsealed and `seal()` runs right after the commit
in a short transaction of its own: it locks the chain head, numbers the unsealed events in id order
and links each to the previous hash. A seal that never ran (the process died between commit and
seal) is done by the next event of that chain or by the beat task `audit.tasks.seal_pending_events`.

The hash covers everything an auditor relies on — chain, sequence, previous hash, time, actor label,
action, target, data and client address — but not `actor_id`, which becomes NULL if a user is deleted.
"""

import hashlib
import ipaddress
from dataclasses import dataclass
from datetime import UTC

import orjson
from django.db import transaction

from audit.models import AuditChainHead, AuditEvent

GENESIS_HASH = "0" * 64
SYSTEM_CHAIN = "system"


def chain_key(tenant_id: int | None) -> str:
    return f"tenant-{tenant_id}" if tenant_id is not None else SYSTEM_CHAIN


def _chain_events(key: str):
    if key == SYSTEM_CHAIN:
        return AuditEvent.objects.filter(tenant__isnull=True)
    return AuditEvent.objects.filter(tenant_id=int(key.removeprefix("tenant-")))


def canonical_address(address) -> str:
    """The address as PostgreSQL's inet gives it back (so the hash survives the round trip); "" if not an IP."""
    try:
        return str(ipaddress.ip_address(address)) if address else ""
    except ValueError:
        return ""


def event_hash(event: AuditEvent) -> str:
    payload = {
        "chain": chain_key(event.tenant_id),
        "sequence": event.sequence,
        "prev_hash": event.prev_hash,
        "created_at": event.created_at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": event.actor_label,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "data": event.data,
        "client_address": canonical_address(event.client_address),
    }
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _locked_head(key: str) -> AuditChainHead:
    head = AuditChainHead.objects.select_for_update().filter(key=key).first()
    if head is None:
        AuditChainHead.objects.bulk_create([AuditChainHead(key=key, hash=GENESIS_HASH)], ignore_conflicts=True)
        head = AuditChainHead.objects.select_for_update().get(key=key)
    return head


def seal(key: str) -> int:
    """Number and link the chain's unsealed events (id order). Returns how many were sealed."""
    with transaction.atomic():
        head = _locked_head(key)
        pending = list(_chain_events(key).filter(sequence__isnull=True).order_by("id"))
        for event in pending:
            event.sequence = head.sequence + 1
            event.prev_hash = head.hash
            event.hash = event_hash(event)
            head.sequence, head.hash = event.sequence, event.hash
        if pending:
            AuditEvent.objects.bulk_update(pending, ["sequence", "prev_hash", "hash"])
            head.save(update_fields=["sequence", "hash", "updated_at"])
    return len(pending)


def seal_all() -> int:
    """Seal every chain that has unsealed events (the beat task's sweep)."""
    tenant_ids = AuditEvent.objects.filter(sequence__isnull=True).values_list("tenant_id", flat=True).distinct()
    return sum(seal(chain_key(tenant_id)) for tenant_id in list(tenant_ids))


@dataclass
class ChainReport:
    key: str
    events: int = 0
    unsealed: int = 0
    head_sequence: int = 0
    head_hash: str = GENESIS_HASH
    broken_at: int | None = None  # the sequence number of the first broken link
    event_id: int | None = None
    problem: str = ""

    @property
    def intact(self) -> bool:
        return not self.problem


def verify(key: str, *, batch: int = 2000) -> ChainReport:
    """Walk one chain in sequence order and name the first link that does not hold.

    Detects an edited event (its hash no longer matches its content), a deleted event (a gap in the
    sequence, or a head that is ahead of the last event), a reordered or replaced event (its prev_hash
    is not the hash of the event before it) and a forged seal (sequence set without a matching hash).
    """
    report = ChainReport(key=key)
    events = _chain_events(key)
    report.unsealed = events.filter(sequence__isnull=True).count()
    expected, previous_hash = 1, GENESIS_HASH
    last_sequence = 0
    while True:
        rows = list(events.filter(sequence__gte=expected).order_by("sequence")[:batch])
        if not rows:
            break
        for event in rows:
            report.events += 1
            if event.sequence != expected:
                return _broken(report, event, expected,
                               f"event #{expected} is missing (deleted): the chain jumps from #{expected - 1} to #{event.sequence}")
            if event.prev_hash != previous_hash:
                return _broken(report, event, expected,
                               f"event #{expected} does not follow #{expected - 1}: its prev_hash is not that event's "
                               "hash (events were reordered, replaced or deleted)")
            if event.hash != event_hash(event):
                return _broken(report, event, expected,
                               f"event #{expected} ({event.action}) was edited: its content no longer matches its hash")
            previous_hash, last_sequence = event.hash, event.sequence
            expected += 1
    head = AuditChainHead.objects.filter(key=key).first()
    report.head_sequence = last_sequence
    report.head_hash = previous_hash
    if head is not None and (head.sequence, head.hash) != (last_sequence, previous_hash):
        report.broken_at = last_sequence + 1
        report.problem = (f"the chain's head says #{head.sequence} but the last event is #{last_sequence}: "
                          "events at the end were deleted or the head was altered")
    elif head is None and last_sequence:
        report.problem = "the chain has events but no head record (it was deleted)"
    return report


def _broken(report: ChainReport, event: AuditEvent, expected: int, problem: str) -> ChainReport:
    report.broken_at, report.event_id, report.problem = expected, event.pk, problem
    return report


def chain_keys(tenant_id: int | None = None, *, system: bool = True) -> list[str]:
    """The chains to verify: one tenant's, or every chain that has a head or events."""
    if tenant_id is not None:
        return [chain_key(tenant_id)]
    keys = set(AuditChainHead.objects.values_list("key", flat=True))
    keys.update(chain_key(t) for t in AuditEvent.objects.values_list("tenant_id", flat=True).distinct())
    if not system:
        keys.discard(SYSTEM_CHAIN)
    return sorted(keys, key=lambda k: (k != SYSTEM_CHAIN, len(k), k))
