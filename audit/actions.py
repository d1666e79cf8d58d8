"""Write paths of the audit pages and API: looking at the trail is itself in the trail."""

from audit.services import record_event


def record_recording_view(session, *, viewer, log_kind: str, client_address: str | None) -> None:
    """Someone was sent a session's log (the asciicast recording, or an SSM session's raw log)."""
    record_event("recording.view", tenant=session.cluster.tenant, actor=viewer, target=session,
                 client_address=client_address,
                 data={"log_kind": log_kind, "person": session.user.email, "cluster": session.cluster.slug})


def record_audit_export(tenant, *, viewer, export_format: str, filters: dict, rows: int, client_address: str | None) -> None:
    """An admin exported events: which filters, in which format, how many rows."""
    record_event("audit.export", tenant=tenant, actor=viewer, client_address=client_address,
                 data={"format": export_format, "filters": filters, "rows": rows})
