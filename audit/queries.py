"""What a viewer may see of the audit trail, in one place: events and terminal sessions (pages and API alike).

In a tenant, an admin sees everything of the tenant; a member sees the events they performed
(`actor = viewer`) and their own terminal sessions. Anything else does not exist for them: a 404, never
a 403 that would confirm it exists. A tenant the viewer has no active membership in shows nothing.
"""

import base64
import binascii
import math
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from django.db.models import Q
from django.http import Http404
from django.urls import reverse
from django.utils import timezone

from accounts.models import Membership, Tenant
from accounts.tenancy import active_memberships
from audit import search
from audit.models import AuditEvent
from terminal.models import SessionLog, TerminalSession

MAX_PAGE_SIZE = 500


class CursorError(ValueError):
    """A pagination cursor this module did not make."""


def viewer_tenant_or_404(viewer, tenant_slug: str) -> tuple[Tenant, bool]:
    """The tenant the viewer is an active member of, and whether they administer it; a 404 otherwise."""
    membership = active_memberships(viewer).filter(tenant__slug=tenant_slug).select_related("tenant").first() \
        if getattr(viewer, "is_authenticated", False) else None
    if membership is None:
        raise Http404("No such tenant.")
    return membership.tenant, membership.role == Membership.Role.ADMIN


# --- events -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventFilters:
    """Filters of an events listing or export. Empty values filter nothing."""

    action: str = ""  # an exact action, or a prefix ending in "." or "*": "terminal.session." / "terminal.*"
    actor: str = ""  # the actor's email, or part of it (admins only)
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    target: str = ""  # "<type>:<id>" (e.g. "terminal.terminalsession:<uuid>") or just the id

    def active(self) -> dict:
        """The filters in use, as JSON-friendly values (for an export's audit event and the export's name)."""
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(self).items() if v}


def visible_events(viewer, tenant, *, is_admin: bool):
    events = AuditEvent.objects.filter(tenant=tenant)
    return events if is_admin else events.filter(actor=viewer)


def filter_events(events, filters: EventFilters):
    action = filters.action.strip()
    if action.endswith("*"):
        events = events.filter(action__startswith=action.rstrip("*"))
    elif action.endswith("."):
        events = events.filter(action__startswith=action)
    elif action:
        events = events.filter(action=action)
    if filters.actor.strip():
        events = events.filter(actor_label__icontains=filters.actor.strip())
    if filters.since:
        events = events.filter(created_at__gte=filters.since)
    if filters.until:
        events = events.filter(created_at__lt=filters.until)
    target = filters.target.strip()
    if target:
        target_type, _, target_id = target.rpartition(":")
        events = events.filter(target_id=target_id)
        if target_type:
            events = events.filter(target_type=target_type)
    return events


def events_page(events, *, cursor: str | None, limit: int) -> tuple[list[AuditEvent], str | None]:
    """Newest first (by id: the order they were written), `limit` of them after the cursor, and the next cursor."""
    if cursor:
        events = events.filter(pk__lt=decode_cursor(cursor, "e")[0])
    page = list(events.order_by("-pk")[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return page, encode_cursor("e", page[-1].pk) if more else None


def session_events(session: TerminalSession):
    """The events whose target is the session, in the order they were written."""
    return AuditEvent.objects.filter(tenant_id=session.cluster.tenant_id, target_type=TerminalSession._meta.label_lower,
                                     target_id=str(session.pk)).order_by("pk")


# --- terminal sessions ------------------------------------------------------------------------------


def visible_sessions(viewer, tenant, *, is_admin: bool):
    sessions = TerminalSession.objects.in_tenant(tenant)
    return sessions if is_admin else sessions.filter(user=viewer)


def session_or_404(viewer, tenant, session_id, *, is_admin: bool) -> TerminalSession:
    session = (visible_sessions(viewer, tenant, is_admin=is_admin)
               .select_related("user", "cluster__tenant").filter(pk=session_id).first())
    if session is None:
        raise Http404("No such session.")
    return session


def person_in_tenant(tenant, email: str) -> int | None:
    """The user id of the tenant's person with this email (any membership status), or None."""
    return Membership.objects.filter(tenant=tenant, user__email__iexact=email.strip()).values_list("user_id", flat=True).first()


# The playback page plays the portal's recording, or with ?log=cloudwatch the SSM agent's CloudWatch Logs stream.
PLAYABLE = {"recording": SessionLog.Kind.ASCIICAST, "cloudwatch": SessionLog.Kind.SSM_CLOUDWATCH}


def playback_url(tenant, session_id, offset: float | None = None, *, log_kind: str = SessionLog.Kind.ASCIICAST) -> str:
    """The playback page of a session; from `offset` seconds (rounded up to a tenth, so the line is on the screen),
    playing the log a search hit was found in when it has timing (the CloudWatch stream), else the portal's recording."""
    url = reverse("audit:playback", args=[tenant.slug, session_id])
    query = [] if offset is None else [f"t={math.ceil(offset * 10) / 10:g}"]
    if log_kind == SessionLog.Kind.SSM_CLOUDWATCH:
        query.append("log=cloudwatch")
    return f"{url}?{'&'.join(query)}" if query else url


@dataclass(frozen=True)
class SessionFilters:
    person_id: int | None = None
    cluster_id: int | None = None
    since: datetime | None = None  # started at or after
    until: datetime | None = None  # started before
    end_reason: str = ""


def filter_sessions(sessions, filters: SessionFilters):
    if filters.person_id is not None:
        sessions = sessions.filter(user_id=filters.person_id)
    if filters.cluster_id is not None:
        sessions = sessions.filter(cluster_id=filters.cluster_id)
    if filters.since:
        sessions = sessions.filter(started_at__gte=filters.since)
    if filters.until:
        sessions = sessions.filter(started_at__lt=filters.until)
    if filters.end_reason:
        sessions = sessions.filter(end_reason=filters.end_reason)
    return sessions


def sessions_page(sessions, *, cursor: str | None, limit: int) -> tuple[list[TerminalSession], str | None]:
    """Newest start first; the cursor is the (start, id) of the last row, so new sessions do not shift the pages."""
    if cursor:
        started, pk = decode_cursor(cursor, "s")
        sessions = sessions.filter(Q(started_at__lt=started) | Q(started_at=started, pk__lt=pk))
    page = list(sessions.select_related("user", "cluster").order_by("-started_at", "-pk")[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return page, encode_cursor("s", page[-1].started_at.isoformat(), page[-1].pk) if more else None


def search_sessions(viewer, tenant, text: str, filters: SessionFilters, *, everyone: bool, cursor: str | None,
                    limit: int) -> tuple[list[tuple[search.Hit, TerminalSession]], str | None]:
    """Lines of the visible sessions that contain `text`, each with its session; raises search.SearchQueryError.

    A member's search is always limited to their own sessions, whatever the filters say; the hits are then
    checked against the sessions the viewer may see once more, so nothing else can slip through.
    """
    person = filters.person_id if everyone else viewer.pk
    found = search.search(text, search.SessionFilter(
        tenant_id=tenant.pk, user_id=person, cluster_id=filters.cluster_id, started_after=filters.since,
        started_before=filters.until, end_reason=filters.end_reason or None), cursor=cursor, limit=limit)
    ids = {hit.session_id for hit in found.hits}
    sessions = {s.pk: s for s in visible_sessions(viewer, tenant, is_admin=everyone).filter(pk__in=ids).select_related("user", "cluster")}
    return [(hit, sessions[hit.session_id]) for hit in found.hits if hit.session_id in sessions], found.next_cursor


# A log in one of these states is flagged wherever its session is shown: "problem" in red, "note" muted.
# Waiting for the store or the indexer is normal for a moment after a session ends: a note after a while.
_LOG_PROBLEMS = {SessionLog.State.LATE, SessionLog.State.MISSING, SessionLog.State.REJECTED}
_INDEX_PROBLEMS = {SessionLog.IndexState.PARTIAL, SessionLog.IndexState.FAILED}
_LOG_NOTES = {SessionLog.State.AWAITED, SessionLog.State.EXPIRED}
_WAITING_NOTE_AFTER = timedelta(minutes=10)


def attach_logs(sessions) -> None:
    """Give each session `log_by_kind` (its SessionLog rows by kind) and `log_flags` [(text, "problem"|"note")], in one query."""
    by_session: dict = {s.pk: {} for s in sessions}
    for log in SessionLog.objects.filter(session__in=list(by_session)):
        by_session[log.session_id][log.kind] = log
    for session in sessions:
        session.log_by_kind = by_session[session.pk]
        session.log_flags = [flag for log in session.log_by_kind.values() for flag in log_flags(log, session)]


LOG_NAMES = {SessionLog.Kind.ASCIICAST: "Recording", SessionLog.Kind.SSM_S3: "SSM log",
             SessionLog.Kind.SSM_CLOUDWATCH: "CloudWatch log"}


def log_flags(log: SessionLog, session: TerminalSession) -> list[tuple[str, str]]:
    name = LOG_NAMES.get(log.kind, log.kind)
    waiting = session.ended_at is not None and timezone.now() - session.ended_at > _WAITING_NOTE_AFTER
    flags = []
    if log.state in _LOG_PROBLEMS or log.state in _LOG_NOTES or (waiting and log.state == SessionLog.State.SPOOLED):
        severity = "problem" if log.state in _LOG_PROBLEMS else "note"
        flags.append((f"{name}: {log.get_state_display()}", severity))
    if log.index_state in _INDEX_PROBLEMS:
        note = f" ({log.index_note})" if log.index_note else ""
        flags.append((f"{name}: {log.get_index_state_display()}{note}", "problem"))
    elif waiting and log.index_state == SessionLog.IndexState.PENDING and log.state not in _LOG_PROBLEMS:
        flags.append((f"{name}: not searchable yet", "note"))
    return flags


# --- cursors ----------------------------------------------------------------------------------------
# Opaque to clients: "<kind>|<value>|..." in URL-safe base64. The kind keeps an events cursor from
# being taken for a sessions cursor.


def encode_cursor(kind: str, *values) -> str:
    return base64.urlsafe_b64encode("|".join([kind, *map(str, values)]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, kind: str) -> tuple:
    try:
        parts = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split("|")
        if parts[0] != kind:
            raise ValueError
        if kind == "e" and len(parts) == 2:
            return (int(parts[1]),)
        if kind == "s" and len(parts) == 3:
            started = datetime.fromisoformat(parts[1])
            if started.tzinfo is None:
                raise ValueError
            return started, uuid.UUID(parts[2])
        raise ValueError
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise CursorError("The cursor is not valid: use the next_cursor of the previous page.") from None
