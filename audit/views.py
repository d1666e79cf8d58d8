"""Session search, playback and the events listing (pages); who sees what is decided in audit/queries.py.

Members: /t/<tenant>/audit/… — their own sessions and what they did. Tenant admins: the console's
Activity page (accounts/console/urls.py) — every session and event of the tenant, and the export.
Playback is one page for both: a session's owner and the tenant's admins see it, anyone else gets a 404.
"""

import json
import math

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponseBadRequest
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET

from accounts.console.common import console_view, page
from accounts.throttle import client_address
from audit import export, queries
from audit.actions import record_audit_export, record_recording_view
from audit.forms import EventFilterForm, SessionSearchForm
from audit.search import SearchQueryError
from clusterra.csp import allow_webassembly
from clusterra.streaming import batched, file_chunks, streaming_response
from terminal import recordings
from terminal.models import SessionLog, TerminalSession

PAGE_SIZE = 50
SPEEDS = ["0.5", "1", "1.5", "2", "4", "8"]


# --- session search -----------------------------------------------------------------------------------


def _session_search(request, tenant, *, everyone: bool) -> dict:
    """The search form and one page of its results: hits grouped by session (with text), or sessions (without)."""
    form = SessionSearchForm(request.GET or None, tenant=tenant, everyone=everyone)
    context = {"tenant": tenant, "form": form, "groups": None, "sessions": None, "next_url": None, "everyone": everyone,
               "people": _people(tenant) if everyone else ()}
    if form.is_bound and not form.is_valid():
        return context
    filters = form.session_filters() if form.is_bound else queries.SessionFilters()
    text = form.cleaned_data["q"] if form.is_bound else ""
    cursor = request.GET.get("cursor") or None
    try:
        if text:
            found, next_cursor = queries.search_sessions(request.user, tenant, text, filters, everyone=everyone,
                                                         cursor=cursor, limit=PAGE_SIZE)
            queries.attach_logs(list({session.pk: session for _, session in found}.values()))
            context["groups"] = _grouped(tenant, found)
        else:
            sessions = queries.filter_sessions(queries.visible_sessions(request.user, tenant, is_admin=everyone), filters)
            listed, next_cursor = queries.sessions_page(sessions, cursor=cursor, limit=PAGE_SIZE)
            queries.attach_logs(listed)
            context["sessions"] = listed
    except (SearchQueryError, queries.CursorError) as exc:
        form.add_error("q" if isinstance(exc, SearchQueryError) else None, str(exc))
        return context
    context["next_url"] = _with_cursor(request, next_cursor)
    return context


def _grouped(tenant, found) -> list[dict]:
    """Consecutive hits of one session under that session (a session can go on on the next page)."""
    groups: list[dict] = []
    for hit, session in found:
        if not groups or groups[-1]["session"].pk != session.pk:
            groups.append({"session": session, "hits": []})
        url = queries.playback_url(tenant, session.pk, hit.offset, log_kind=hit.log_kind)
        groups[-1]["hits"].append({"hit": hit, "url": url})
    return groups


def _people(tenant):
    return tenant.memberships.select_related("user").order_by("user__email").values_list("user__email", flat=True)


def _with_cursor(request, cursor: str | None) -> str | None:
    if not cursor:
        return None
    query = request.GET.copy()
    query["cursor"] = cursor
    return f"?{query.urlencode()}"


def _search_page(request, template: str, context: dict, render_page):
    """The whole page, or for htmx's "More results" only the next rows."""
    if request.headers.get("HX-Request") and request.GET.get("cursor"):
        return render(request, template, context)
    return render_page(context)


@login_required
@require_GET
def my_sessions(request, tenant_slug):
    """A person's own terminal sessions: search inside them, play them back."""
    tenant, _ = queries.viewer_tenant_or_404(request.user, tenant_slug)
    context = _session_search(request, tenant, everyone=False)
    return _search_page(request, _rows_template(context), context, lambda ctx: render(
        request, "audit/my_sessions.html", {**ctx, "tab": "sessions"}))


@console_view
@require_GET
def activity(request, tenant):
    """The console's Activity page: search every session of the tenant (events are the second tab)."""
    context = _session_search(request, tenant, everyone=True)
    return _search_page(request, _rows_template(context), context, lambda ctx: page(
        request, tenant, "activity", "activity.html", {**ctx, "tab": "sessions"}))


def _rows_template(context) -> str:
    return "audit/_hits.html" if context["groups"] is not None else "audit/_session_rows.html"


# --- events -------------------------------------------------------------------------------------------


def _events(request, tenant, *, everyone: bool) -> dict:
    """The events form and one page of events."""
    form = EventFilterForm(request.GET or None, everyone=everyone)
    events = queries.visible_events(request.user, tenant, is_admin=everyone)
    context = {"tenant": tenant, "form": form, "events": [], "next_url": None, "everyone": everyone}
    if form.is_bound:
        if not form.is_valid():
            return context
        events = queries.filter_events(events, form.event_filters())
    try:
        listed, next_cursor = queries.events_page(events, cursor=request.GET.get("cursor") or None, limit=PAGE_SIZE)
    except queries.CursorError as exc:
        form.add_error(None, str(exc))
        return context
    context.update(events=listed, next_url=_with_cursor(request, next_cursor))
    return context


@login_required
@require_GET
def my_events(request, tenant_slug):
    """What a person did in the tenant (sign-ins, sessions, jobs, tokens…)."""
    tenant, _ = queries.viewer_tenant_or_404(request.user, tenant_slug)
    context = _events(request, tenant, everyone=False)
    return _search_page(request, "audit/_event_rows.html", context, lambda ctx: render(
        request, "audit/my_events.html", {**ctx, "tab": "events"}))


@console_view
@require_GET
def activity_events(request, tenant):
    context = _events(request, tenant, everyone=True)
    query = request.GET.copy()
    query.pop("cursor", None)
    context["export_query"] = query.urlencode()
    return _search_page(request, "audit/_event_rows.html", context, lambda ctx: page(
        request, tenant, "activity", "activity_events.html", {**ctx, "tab": "events"}))


@console_view
@require_GET
def export_events(request, tenant, export_format: str):
    """The filtered events as JSON lines or CSV, streamed; the export is itself an event (filters, rows)."""
    form = EventFilterForm(request.GET or None, everyone=True)
    if form.is_bound and not form.is_valid():
        return HttpResponseBadRequest("The filters are not valid: " + "; ".join(
            f"{field}: {' '.join(errors)}" for field, errors in form.errors.items()), content_type="text/plain")
    filters = form.event_filters() if form.is_bound else queries.EventFilters()
    events = queries.filter_events(queries.visible_events(request.user, tenant, is_admin=True), filters)
    # The rows are fixed before the export's own event is written: events up to the newest one now.
    newest = events.order_by("-pk").values_list("pk", flat=True).first()
    events = events.filter(pk__lte=newest) if newest else events.none()
    record_audit_export(tenant, viewer=request.user, export_format=export_format, filters=filters.active(),
                        rows=events.count(), client_address=client_address(request))
    rows = export.lines(events.order_by("pk").iterator(chunk_size=2000), tenant.slug, export_format)
    response = streaming_response(request, batched(rows), content_type=export.FORMATS[export_format])
    name = f"audit-{tenant.slug}-{timezone.now():%Y%m%dT%H%M%SZ}.{export_format}"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["Cache-Control"] = "private, no-store"
    return response


# --- playback -----------------------------------------------------------------------------------------


@login_required
@require_GET
@allow_webassembly  # asciinema-player's terminal emulator is WebAssembly
def playback(request, tenant_slug, session_id):
    tenant, is_admin = queries.viewer_tenant_or_404(request.user, tenant_slug)
    session = queries.session_or_404(request.user, tenant, session_id, is_admin=is_admin)
    queries.attach_logs([session])
    recording = session.log_by_kind.get(SessionLog.Kind.ASCIICAST)
    ssm_log = session.log_by_kind.get(SessionLog.Kind.SSM_S3)
    cloudwatch_log = session.log_by_kind.get(SessionLog.Kind.SSM_CLOUDWATCH)
    # The player plays the portal's recording, or the agent's CloudWatch stream when asked (?log=cloudwatch) or when
    # the recording cannot be read; both count their time from the session's start.
    playable = [name for name, kind in queries.PLAYABLE.items() if _readable(session.log_by_kind.get(kind))]
    playing = request.GET.get("log") if request.GET.get("log") in playable else next(iter(playable), None)
    start = _seconds(request.GET.get("t"))
    events = list(queries.session_events(session))
    for event in events:  # where in the recording it happened (the recording starts with the session)
        event.offset = round(max(0.0, (event.created_at - session.started_at).total_seconds()), 1)
    markers = [[e.offset, e.action] for e in events if e.offset >= 1 and e.action != "terminal.session.start"]
    if start:
        markers.append([start, "Search hit"])
    speed = request.GET.get("speed") if request.GET.get("speed") in SPEEDS else "1"
    back = reverse("console:activity", args=[tenant.slug]) if is_admin else reverse("audit:sessions", args=[tenant.slug])
    return render(request, "audit/playback.html", {
        "tenant": tenant, "session": session, "events": events, "back_url": back,
        "recording_url": reverse(f"audit:{playing}", args=[tenant.slug, session.pk]) if playing else None,
        "playing": playing, "playable": playable, "recording_log": recording,
        "ssm_log_url": reverse("audit:ssm_log", args=[tenant.slug, session.pk]) if _readable(ssm_log) else None,
        "ssm_log": ssm_log, "cloudwatch_log": cloudwatch_log,
        "cloudwatch_url": reverse("audit:cloudwatch", args=[tenant.slug, session.pk]) if "cloudwatch" in playable else None,
        "start": start, "speed": speed, "speeds": SPEEDS, "markers": json.dumps(sorted(markers)),
    })


def _readable(log: SessionLog | None) -> bool:
    return log is not None and log.state in (SessionLog.State.RECORDING, SessionLog.State.SPOOLED, SessionLog.State.STORED)


def _seconds(text: str | None) -> float:
    try:
        value = float(text or 0)
    except ValueError:
        return 0.0
    return value if math.isfinite(value) and value > 0 else 0.0


@login_required
@require_GET
def recording(request, tenant_slug, session_id):
    """The session's asciicast recording, streamed from the recording store (or the spool)."""
    return _log_response(request, tenant_slug, session_id, SessionLog.Kind.ASCIICAST, "application/x-asciicast",
                         "{}.cast", inline=True)


@login_required
@require_GET
def cloudwatch(request, tenant_slug, session_id):
    """An SSM session's CloudWatch Logs stream, as the asciicast recording it was stored as (terminal/cloudwatch.py)."""
    return _log_response(request, tenant_slug, session_id, SessionLog.Kind.SSM_CLOUDWATCH, "application/x-asciicast",
                         "{}.cloudwatch.cast", inline=True)


@login_required
@require_GET
def ssm_log(request, tenant_slug, session_id):
    """An SSM session's raw log as the agent wrote it to S3 (escape sequences included, no timing)."""
    return _log_response(request, tenant_slug, session_id, SessionLog.Kind.SSM_S3, "text/plain; charset=utf-8",
                         "{}.log", inline=not request.GET.get("download"))


def _log_response(request, tenant_slug, session_id, kind: str, content_type: str, filename: str, *, inline: bool):
    tenant, is_admin = queries.viewer_tenant_or_404(request.user, tenant_slug)
    session: TerminalSession = queries.session_or_404(request.user, tenant, session_id, is_admin=is_admin)
    log = SessionLog.objects.filter(session=session, kind=kind).first()
    try:
        stream = recordings.open_log(log) if log is not None else None
    except recordings.RecordingUnavailable as exc:
        raise Http404(str(exc)) from None
    if stream is None:
        raise Http404("This session has no such log.")
    record_recording_view(session, viewer=request.user, log_kind=kind, client_address=client_address(request))
    response = streaming_response(request, file_chunks(stream), content_type=content_type)
    response["Content-Disposition"] = f'{"inline" if inline else "attachment"}; filename="{filename.format(session.pk)}"'
    response["Cache-Control"] = "private, no-store"
    return response

