"""The one way to write an audit event."""

from audit.models import AuditEvent


def record_event(action: str, *, tenant=None, actor=None, target=None, data=None, client_address=None) -> AuditEvent:
    return AuditEvent.objects.create(
        tenant=tenant,
        actor=actor if getattr(actor, "pk", None) else None,
        actor_label=getattr(actor, "email", "") or "system",
        action=action,
        target_type=target._meta.label_lower if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        data=data or {},
        client_address=client_address or None,
    )
