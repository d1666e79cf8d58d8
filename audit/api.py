"""/v1/audit/…: the audit trail's events and the search in terminal sessions (mounted in clusterra/urls.py).

The same visibility as the pages (audit/queries.py): in a tenant, an admin sees every event and session,
a member the events they performed and their own sessions; another tenant is a 404. A token is scoped to
its tenant; a signed-in browser names the tenant with `tenant=` when it belongs to several.
"""

import uuid
from datetime import UTC, datetime

import pydantic
from django.http import Http404
from ninja import Query, Router, Schema
from ninja.errors import HttpError

from accounts.tenancy import active_memberships
from audit import queries
from audit.search import MAX_QUERY_LENGTH, MIN_QUERY_LENGTH, SearchQueryError
from jobs.api import errors
from terminal.models import TerminalSession

router = Router(tags=["audit"])
MAX_LIMIT = 200


# --- schemas --------------------------------------------------------------------------------------


class _Filters(Schema):
    tenant: str | None = None  # the tenant's slug; a token's own tenant by default
    since: datetime | None = None  # from this time (inclusive); a date alone is midnight UTC
    until: datetime | None = None  # up to this time (exclusive)
    cursor: str | None = None  # next_cursor of the previous page
    limit: int = pydantic.Field(50, ge=1, le=MAX_LIMIT)

    @pydantic.field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, value):
        if isinstance(value, str) and "\x00" in value:  # PostgreSQL cannot even compare with a NUL
            raise ValueError("must not contain NUL characters")
        return value

    @pydantic.field_validator("since", "until")
    @classmethod
    def _utc_if_naive(cls, value: datetime | None):
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class EventFilters(_Filters):
    action: str | None = None  # exact, or a prefix ending in "." or "*" ("terminal.session.", "job.*")
    actor: str | None = None  # the actor's email or part of it (tenant admins only)
    target: str | None = None  # "<type>:<id>" such as "terminal.terminalsession:<uuid>", or just the id


class SearchFilters(_Filters):
    q: str = pydantic.Field(min_length=MIN_QUERY_LENGTH, max_length=MAX_QUERY_LENGTH,
                            description="Literal text (no query language), found within one line, case-insensitively.")
    person: str | None = None  # the session owner's email (tenant admins only)
    cluster: int | None = None  # a cluster id (GET /v1/clusters)
    end_reason: str | None = None  # closed, idle, max_duration, revoked, backend_error, server_shutdown, worker_lost


class EventOut(Schema):
    id: int
    sequence: int | None  # position in the tenant's hash chain; null for a moment after it is written
    prev_hash: str
    hash: str
    created_at: datetime
    actor: str  # the actor's email at the time, or "system"
    actor_id: int | None
    action: str
    target_type: str
    target_id: str
    client_address: str | None
    data: dict

    @staticmethod
    def resolve_actor(obj) -> str:
        return obj.actor_label


class EventPage(Schema):
    items: list[EventOut]
    next_cursor: str | None


class SessionOut(Schema):
    id: uuid.UUID
    person: str
    posix_user: str
    cluster_id: int
    cluster: str  # the cluster's slug
    backend: str
    started_at: datetime
    ended_at: datetime | None
    end_reason: str  # empty while live
    duration: int | None  # seconds; null while live
    client_address: str | None
    log_flags: list[str]  # e.g. "SSM log: Late: not in the cluster's bucket yet"; empty when all is well
    playback_url: str


class HitOut(Schema):
    session: SessionOut
    log_kind: str  # "asciicast" (the portal's recording), "ssm_s3" or "ssm_cloudwatch" (the SSM agent's S3 or CloudWatch log)
    offset: float | None  # seconds from the start of the session; null for an SSM S3 log (no timing)
    kind: str  # "command" (typed at the prompt) or "output"
    text: str  # the line as it appeared
    spans: list[tuple[int, int]]  # where the query matches in text: [start, end) character positions
    playback_url: str  # playback from this moment


class SearchPage(Schema):
    items: list[HitOut]
    next_cursor: str | None


# --- endpoints ------------------------------------------------------------------------------------


@router.get("/events", response={200: EventPage, **errors(400, 403, 404)}, summary="Audit events (newest first)")
def list_events(request, filters: Query[EventFilters]):
    tenant, is_admin = _tenant(request, filters.tenant)
    if filters.actor and not is_admin:
        raise HttpError(403, "Only tenant admins can filter by actor: a member sees only their own events.")
    events = queries.filter_events(queries.visible_events(request.user, tenant, is_admin=is_admin), queries.EventFilters(
        action=filters.action or "", actor=filters.actor or "", target=filters.target or "",
        since=filters.since, until=filters.until))
    try:
        items, next_cursor = queries.events_page(events, cursor=filters.cursor, limit=filters.limit)
    except queries.CursorError as exc:
        raise HttpError(400, str(exc)) from None
    return {"items": items, "next_cursor": next_cursor}


@router.get("/search", response={200: SearchPage, **errors(400, 403, 404)},
            summary="Search inside terminal sessions: lines as they appeared and commands as typed")
def search_sessions(request, filters: Query[SearchFilters]):
    tenant, is_admin = _tenant(request, filters.tenant)
    if filters.person and not is_admin:
        raise HttpError(403, "Only tenant admins can search other people's sessions.")
    if filters.end_reason and filters.end_reason not in TerminalSession.EndReason.values:
        raise HttpError(400, f"end_reason must be one of {', '.join(TerminalSession.EndReason.values)}.")
    session_filters = queries.SessionFilters(person_id=_person_id(tenant, filters.person), cluster_id=filters.cluster,
                                             since=filters.since, until=filters.until, end_reason=filters.end_reason or "")
    try:
        found, next_cursor = queries.search_sessions(request.user, tenant, filters.q, session_filters, everyone=is_admin,
                                                     cursor=filters.cursor, limit=filters.limit)
    except SearchQueryError as exc:
        raise HttpError(400, str(exc)) from None
    queries.attach_logs(list({session.pk: session for _, session in found}.values()))
    return {"items": [_hit_out(tenant, hit, session) for hit, session in found], "next_cursor": next_cursor}


# --- helpers --------------------------------------------------------------------------------------


def _tenant(request, slug: str | None):
    """The tenant of the request and whether the caller administers it: a token's own, or the one named."""
    token_tenant = getattr(request, "api_tenant", None)
    if token_tenant is not None:
        if slug and slug != token_tenant.slug:
            raise Http404("No such tenant.")
        slug = token_tenant.slug
    if not slug:
        slugs = list(active_memberships(request.user).values_list("tenant__slug", flat=True)[:2])
        if len(slugs) > 1:
            raise HttpError(400, "You belong to several tenants: name one with tenant=<slug>.")
        slug = slugs[0] if slugs else ""
    return queries.viewer_tenant_or_404(request.user, slug)


def _person_id(tenant, email: str | None) -> int | None:
    if not email:
        return None
    person_id = queries.person_in_tenant(tenant, email)
    if person_id is None:
        raise HttpError(400, "person: no one with this email in the tenant.")
    return person_id


def _hit_out(tenant, hit, session) -> HitOut:
    return HitOut(session=_session_out(tenant, session), log_kind=hit.log_kind, offset=hit.offset, kind=hit.kind,
                  text=hit.text, spans=list(hit.spans),
                  playback_url=queries.playback_url(tenant, session.pk, hit.offset, log_kind=hit.log_kind))


def _session_out(tenant, session) -> SessionOut:
    ended = session.ended_at
    return SessionOut(
        id=session.pk, person=session.user.email, posix_user=session.posix_username, cluster_id=session.cluster_id,
        cluster=session.cluster.slug, backend=session.backend, started_at=session.started_at, ended_at=ended,
        end_reason=session.end_reason, client_address=session.client_address,
        duration=int((ended - session.started_at).total_seconds()) if ended else None,
        log_flags=[text for text, _ in session.log_flags],
        playback_url=queries.playback_url(tenant, session.pk))
