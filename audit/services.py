"""The one way to write an audit event."""

import json
import logging

from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone

from audit import chain
from audit.models import AuditEvent

logger = logging.getLogger(__name__)


def record_event(action: str, *, tenant=None, actor=None, target=None, data=None, client_address=None) -> AuditEvent:
    """Append an event to its tenant's chain (sealed right after the surrounding transaction commits).

    `data` is stored as JSON: UUIDs, dates and decimals become strings here, so the hash is computed over
    exactly what the database holds. Never put a secret in it.
    """
    event = AuditEvent.objects.create(
        tenant=tenant,
        actor=actor if getattr(actor, "pk", None) else None,
        actor_label=getattr(actor, "email", "") or "system",
        action=action,
        target_type=target._meta.label_lower if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        data=json.loads(json.dumps(data or {}, cls=DjangoJSONEncoder)),
        client_address=chain.canonical_address(client_address) or None,
        created_at=timezone.now(),
    )
    key = chain.chain_key(event.tenant_id)
    # robust: a failed seal is logged and retried by the beat sweep; the caller's action stands.
    transaction.on_commit(lambda: chain.seal(key), robust=True)
    return event
