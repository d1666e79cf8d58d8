"""Okta Event Hooks: `/hooks/okta/<tenant>/`, for removing people the moment Okta says so.

- Every request must carry the tenant's hook secret in `Authorization` (Okta's event hooks authenticate
  with a static header; the portal keeps only its SHA-256 and compares in constant time). Anything else
  gets a 401 and changes nothing; an unknown tenant gets the same 401.
- GET with `X-Okta-Verification-Challenge`: the one-time verification, answered `{"verification": …}`.
- POST: a delivery of System Log events (`data.events`). Each event is recorded once by its `uuid` (Okta
  delivers at least once: a repeat is counted and not acted on again), then:
  - `user.lifecycle.deactivate` → offboard_person (source idp): terminals on every daphne process, tokens,
    web sessions, then the head-node lock;
  - `user.lifecycle.suspend` → the same as a suspension (source idp; nothing on the head nodes);
  - `group.user_membership.remove` of a group an access rule names → sync_groups with the person's last
    known groups minus that one: clusters only that group gave are revoked, no group left offboards.
  Everything else is recorded as ignored. An administrator's offboarding stands; a person an administrator
  suspended is offboarded by a deactivation, and it stays the administrator's decision (only they reinstate).
- The work runs at once, in a small thread pool of the portal process that received it, and the answer
  waits for it up to OKTA_HOOK_ANSWER_WITHIN seconds (then 200 anyway, the work goes on): terminals end
  within a second of delivery, and a slow head node never makes Okta time out and deliver again.
The periodic reconciliation (okta/reconcile.py) is the safety net for deliveries that never arrive.
"""

import asyncio
import datetime
import json
import logging
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, close_old_connections, connection, transaction
from django.db.models import F
from django.http import JsonResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from accounts import lifecycle
from accounts.models import AccessRule, IdentityLink, Membership, User
from accounts.throttle import client_address
from audit.services import record_event
from okta.models import HookEvent, OktaConnection, hash_secret

logger = logging.getLogger(__name__)

DEACTIVATE, SUSPEND, GROUP_REMOVE = "user.lifecycle.deactivate", "user.lifecycle.suspend", "group.user_membership.remove"
HANDLED = (DEACTIVATE, SUSPEND, GROUP_REMOVE)
SOURCE = "okta-hook"
MAX_EVENTS = 100  # per delivery (Okta batches up to 50)

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_running: set = set()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=settings.OKTA_HOOK_THREADS, thread_name_prefix="okta-hook")
        return _pool


def _unauthorized(request, okta: OktaConnection | None, tenant_slug: str) -> JsonResponse:
    address = client_address(request)
    logger.warning("okta event hook for %r refused: wrong or missing secret (from %s)", tenant_slug, address)
    if okta is not None:
        try:  # one audit event a minute per tenant and address: a flood of forgeries does not flood the trail
            first = cache.add(f"okta-hook-refused:{okta.tenant_id}:{address}", 1, 60)
        except Exception:  # the cache is away: log only (above)
            first = False
        if first:
            record_event("okta.hook.refused", tenant=okta.tenant, client_address=address,
                         data={"method": request.method, "reason": "wrong or missing secret"})
    return JsonResponse({"error": "unauthorized"}, status=401)


@csrf_exempt
@require_http_methods(["GET", "POST"])
async def event_hook(request, tenant_slug: str):
    """Async, so the work can outlive the answer: it runs in a thread of asgiref's (whose channel-layer sends go
    through this process's own event loop and Redis connections, as a view's do) while the answer waits for it
    at most OKTA_HOOK_ANSWER_WITHIN seconds."""
    response, tenant_id, new, counts = await sync_to_async(_accept)(request, tenant_slug)
    if response is not None:
        return response
    finished = True
    if new and settings.OKTA_HOOK_THREADS == 0:
        await sync_to_async(process_events)(tenant_id, new)  # in the request's own thread (the tests' database)
    elif new:
        task = asyncio.ensure_future(sync_to_async(_in_thread, thread_sensitive=False, executor=_executor())(tenant_id, new))
        _running.add(task)  # a strong reference until it is done, also after the answer
        task.add_done_callback(_running.discard)
        try:
            await asyncio.wait_for(asyncio.shield(task), settings.OKTA_HOOK_ANSWER_WITHIN)
        except TimeoutError:
            finished = False
    return JsonResponse({**counts, "new": len(new), "finished": finished})


def _accept(request, tenant_slug: str) -> tuple[JsonResponse | None, int | None, list, dict]:
    """Authenticate, answer the verification, parse and record a delivery: (an answer to give now, or None and the
    tenant's id, the new events to act on and the counts)."""
    okta = OktaConnection.objects.filter(tenant__slug=tenant_slug).select_related("tenant").first()
    presented = request.headers.get("Authorization")
    if okta is None:
        hash_secret(presented or "")  # the same work as a known tenant: the answer's timing says nothing
        return _unauthorized(request, None, tenant_slug), None, [], {}
    if not okta.hook_secret_matches(presented):
        return _unauthorized(request, okta, tenant_slug), None, [], {}
    tenant = okta.tenant
    if request.method == "GET":
        challenge = request.headers.get("X-Okta-Verification-Challenge")
        if not challenge:
            return JsonResponse({"error": "GET is only Okta's verification: X-Okta-Verification-Challenge is missing"},
                                status=400), None, [], {}
        record_event("okta.hook.verify", tenant=tenant, client_address=client_address(request))
        return JsonResponse({"verification": challenge}), None, [], {}
    body = request.read(settings.OKTA_HOOK_MAX_BODY + 1)
    if len(body) > settings.OKTA_HOOK_MAX_BODY:
        return JsonResponse({"error": f"the body is larger than {settings.OKTA_HOOK_MAX_BODY} bytes"}, status=413), None, [], {}
    try:
        payload = json.loads(body)
        events = payload["data"]["events"]
        if not isinstance(events, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return JsonResponse({"error": "not an Okta event hook delivery (data.events)"}, status=400), None, [], {}
    new, duplicates = [], 0
    for event in events[:MAX_EVENTS]:
        row = _record(tenant, event)
        if row is None:
            duplicates += 1
        elif row.status == HookEvent.Status.RECEIVED:
            new.append((row.pk, event))
    return None, tenant.pk, new, {"received": len(events[:MAX_EVENTS]), "duplicates": duplicates}


def _record(tenant, event) -> HookEvent | None:
    """The event's row (new), or None for an event already received (its delivery count goes up)."""
    if not isinstance(event, dict):
        event = {}
    event_id = str(event.get("uuid") or "")[:64]
    event_type = str(event.get("eventType") or "")[:100]
    user, group = _targets(event)
    try:
        published = parse_datetime(event["published"]) if isinstance(event.get("published"), str) else None
    except ValueError:
        published = None
    if published is not None and timezone.is_naive(published):
        published = timezone.make_aware(published, datetime.UTC)
    fields = {"event_type": event_type, "published": published, "target": str((user or {}).get("alternateId") or "")[:300],
              "group": str((group or {}).get("displayName") or "")[:255]}
    if not event_id:
        return HookEvent.objects.create(tenant=tenant, event_id=f"missing-{secrets.token_hex(8)}", **fields,
                                        status=HookEvent.Status.IGNORED, result="The event has no uuid.",
                                        finished_at=timezone.now())
    try:
        with transaction.atomic():
            row = HookEvent.objects.create(tenant=tenant, event_id=event_id, **fields)
    except IntegrityError:
        HookEvent.objects.filter(tenant=tenant, event_id=event_id).update(deliveries=F("deliveries") + 1)
        return None
    if event_type not in HANDLED:
        HookEvent.objects.filter(pk=row.pk).update(status=HookEvent.Status.IGNORED, finished_at=timezone.now(),
                                                   result="Not an event the portal acts on.")
        row.status = HookEvent.Status.IGNORED
    return row


def _targets(event: dict) -> tuple[dict | None, dict | None]:
    user = group = None
    targets = event.get("target")
    for target in targets if isinstance(targets, list) else []:
        if isinstance(target, dict) and target.get("type") == "User" and user is None:
            user = target
        elif isinstance(target, dict) and target.get("type") == "UserGroup" and group is None:
            group = target
    return user, group


def _in_thread(tenant_id: int, items: list) -> None:
    close_old_connections()
    try:
        process_events(tenant_id, items)
    except Exception:  # after the answer nobody else would see it
        logger.exception("okta event hook work for tenant %s failed", tenant_id)
    finally:
        connection.close()  # a pool thread's own connection: never left open between deliveries


def process_events(tenant_id: int, items: list) -> None:
    from accounts.models import Tenant
    tenant = Tenant.objects.get(pk=tenant_id)
    for row_id, event in items:
        try:
            status, result = handle_event(tenant, event)
        except Exception as exc:
            logger.exception("okta event %s for %s failed", event.get("uuid"), tenant.slug)
            status, result = HookEvent.Status.FAILED, f"{type(exc).__name__}: {exc}"[:1000]
        HookEvent.objects.filter(pk=row_id).update(status=status, result=result, finished_at=timezone.now())
        record_event("okta.hook.event", tenant=tenant, data={
            "uuid": event.get("uuid"), "event_type": event.get("eventType"), "status": status, "result": result[:500],
            "target": (_targets(event)[0] or {}).get("alternateId", "")})


def _find_user(tenant, target: dict | None) -> User | None:
    if not target:
        return None
    if target.get("id"):
        link = IdentityLink.objects.filter(tenant=tenant, subject=str(target["id"])).select_related("user").first()
        if link is not None:
            return link.user
    login = str(target.get("alternateId") or "").strip().lower()
    return User.objects.filter(email=login).first() if "@" in login else None


def _offboard_summary(report) -> str:
    parts = [f"{len(report.sessions_ended)} live terminal sessions ended"]
    if report.tokens_revoked:
        parts.append(f"{report.tokens_revoked} API tokens revoked")
    if report.clusters_locked:
        parts.append(f"locked on {', '.join(report.clusters_locked)}")
    if report.clusters_pending:
        parts.append(f"head node lock retried on {', '.join(report.clusters_pending)}")
    return "; ".join(parts)


def handle_event(tenant, event: dict) -> tuple[str, str]:
    """Act on one event; returns (HookEvent status, what was done)."""
    event_type, uuid = event.get("eventType"), event.get("uuid")
    target, group_target = _targets(event)
    user = _find_user(tenant, target)
    if user is None:
        return HookEvent.Status.IGNORED, f"No portal user for the Okta user {(target or {}).get('alternateId', '?')!r}."
    membership = Membership.objects.filter(tenant=tenant, user=user).first()
    if membership is None:
        return HookEvent.Status.IGNORED, f"{user.email} is not a member of the tenant."
    if event_type == DEACTIVATE:
        if membership.status == Membership.Status.OFFBOARDED:
            return HookEvent.Status.IGNORED, f"{user.email} is already offboarded."
        # An administrator's suspension stays theirs to undo (source admin), but the deactivation offboards all the same.
        source = membership.status_source if membership.status == Membership.Status.SUSPENDED else Membership.Source.IDP
        report = lifecycle.offboard_person(tenant=tenant, user=user, actor=None, source=source,
                                           reason=f"Deactivated in Okta (event hook {uuid}).")
        return HookEvent.Status.DONE, f"Offboarded {user.email}: {_offboard_summary(report)}."
    if event_type == SUSPEND:
        if membership.status != Membership.Status.ACTIVE:
            return HookEvent.Status.IGNORED, f"{user.email} is already {membership.status}."
        report = lifecycle.offboard_person(tenant=tenant, user=user, actor=None, source=Membership.Source.IDP,
                                           status=Membership.Status.SUSPENDED, reason=f"Suspended in Okta (event hook {uuid}).")
        return HookEvent.Status.DONE, f"Suspended {user.email}: {_offboard_summary(report)}."
    # group.user_membership.remove
    group = str((group_target or {}).get("displayName") or "")
    if not AccessRule.objects.filter(tenant=tenant, group=group).exists():
        return HookEvent.Status.IGNORED, f"No access rule names the group {group!r}."
    if group not in (membership.idp_groups or []):
        return HookEvent.Status.IGNORED, f"{group!r} is not among {user.email}'s known groups."
    groups = [g for g in membership.idp_groups if g != group]
    was_active = membership.status == Membership.Status.ACTIVE
    result = lifecycle.sync_groups(tenant=tenant, user=user, groups=groups, source=SOURCE)
    if result is None and was_active:
        return HookEvent.Status.DONE, f"Removed from {group!r}; no group gives {user.email} access any more: offboarded."
    return HookEvent.Status.DONE, f"Removed from {group!r}; {user.email}'s groups are now {', '.join(groups) or 'none'}."
