"""Reconciliation: make the portal's people what the tenant's Okta groups say, through accounts/lifecycle.py.

1. Read every mapped group completely: the tenant's access-rule groups, each found by name in Okta and
   its members read page by page (okta/client.py). Any failure — Okta down, credentials refused, a group
   missing or gone (404), rate limits beyond the budget — fails the run with the error and applies
   nothing: a partial read must never look like people leaving.
2. Plan: each person in Okta is matched to a portal user (the IdP link from their sign-ins, whose subject
   is the Okta user id, else the email: profile.email, then the login) and compared with their membership:
   - add: in a mapped group, no membership (a portal user is created if needed);
   - update: active, but the mapped groups last seen (Membership.idp_groups) differ;
   - reinstate: offboarded or suspended because of the IdP, and a group gives access again;
   - suspend: suspended in Okta (Okta sends nothing over SCIM for that) and active here;
   - remove: active, given access by the IdP (status set by the IdP, or a mapped group last seen), and in
     none of the groups any more, or deactivated in Okta.
   People whose status an administrator decided (offboarded or suspended by hand) are left alone — except that
   a deactivation in Okta offboards a person an administrator suspended (still the administrator's decision) —
   and so are people an administrator added whom no group names: only what the groups say is applied.
3. Apply, unless it is a dry run: removals first, then the rest, each through `sync_groups` (or
   `offboard_person` for a suspension), so a change does here exactly what a sign-in or SCIM would do.
   One person's failure is recorded and the others go on. A run that would offboard or suspend more than
   the connection's `max_removals` applies nothing and fails (a group emptied by mistake).

Two runs of one tenant never overlap (SyncRun's partial unique constraint on running runs).
"""

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts import lifecycle
from accounts.access import AccessError
from accounts.models import AccessRule, IdentityLink, Membership, User
from audit.services import record_event
from okta.client import OktaClient, OktaError
from okta.models import OktaConnection, SyncRun

logger = logging.getLogger(__name__)

SOURCE = "okta-sync"
# Okta user statuses (Users API). SUSPENDED: suspended here; DEPROVISIONED (deactivated): as if in no group.
# Every other status (ACTIVE, PASSWORD_EXPIRED, LOCKED_OUT, RECOVERY, PROVISIONED, STAGED) lets the groups apply.
SUSPENDED, DEPROVISIONED = "SUSPENDED", "DEPROVISIONED"
REMOVALS = ("remove", "suspend")
ORDER = {"remove": 0, "suspend": 1, "update": 2, "reinstate": 3, "add": 4}
MAX_RECORDED_CHANGES = 5000


@dataclass
class OktaPerson:
    okta_id: str
    email: str
    login: str
    name: str
    status: str
    groups: set[str] = field(default_factory=set)


@dataclass
class Plan:
    changes: list[dict]
    people: dict[str, OktaPerson]
    mapped: set[str]
    users: dict[str, User]  # okta id → portal user, for those who have one

    def removals(self) -> int:
        return sum(1 for c in self.changes if c["action"] in REMOVALS)


def _email_of(profile: dict) -> str:
    for key in ("email", "login"):
        value = profile.get(key)
        if isinstance(value, str) and "@" in value:
            return value.strip().lower()
    return ""


def read_groups(client: OktaClient, names: list[str]) -> tuple[dict[str, OktaPerson], list[dict]]:
    """Every member of every named group, or OktaError. Returns (people by Okta id, groups read)."""
    people: dict[str, OktaPerson] = {}
    groups = []
    for name in names:
        group = client.find_group(name)
        members = client.group_members(group["id"], name)
        groups.append({"name": name, "id": group["id"], "members": len(members)})
        for member in members:
            if not isinstance(member, dict) or not member.get("id"):
                raise OktaError(f"Okta sent a member of {name!r} without an id.")
            profile = member.get("profile") or {}
            person = people.get(member["id"])
            if person is None:
                name_parts = [profile.get("firstName") or "", profile.get("lastName") or ""]
                person = people[member["id"]] = OktaPerson(
                    okta_id=member["id"], email=_email_of(profile), login=str(profile.get("login") or ""),
                    name=(profile.get("displayName") or " ".join(p for p in name_parts if p))[:200], status=str(member.get("status") or ""))
            person.groups.add(name)
    return people, groups


def _match_users(tenant, people: dict[str, OktaPerson]) -> dict[str, User]:
    """Okta id → portal user: the sign-in's link (subject = Okta user id) first, else the email."""
    matched: dict[str, User] = {}
    ids = list(people)
    for start in range(0, len(ids), 1000):
        for link in IdentityLink.objects.filter(tenant=tenant, subject__in=ids[start:start + 1000]).select_related("user"):
            matched[link.subject] = link.user
    wanted = {p.email: p.okta_id for p in people.values() if p.okta_id not in matched and p.email}
    emails = list(wanted)
    for start in range(0, len(emails), 1000):
        for user in User.objects.filter(email__in=emails[start:start + 1000]):
            matched[wanted[user.email]] = user
    return matched


def _change(action: str, person: OktaPerson | None, user: User | None, before: set, after: set, why: str) -> dict:
    return {"action": action, "email": user.email if user is not None else person.email,
            "okta_id": person.okta_id if person else "", "user_id": user.pk if user is not None else None,
            "name": person.name if person else "", "groups_before": sorted(before), "groups_after": sorted(after),
            "why": why, "applied": None, "error": ""}


def plan_changes(tenant, people: dict[str, OktaPerson], mapped: set[str]) -> Plan:
    users = _match_users(tenant, people)
    memberships = {m.user_id: m for m in Membership.objects.filter(tenant=tenant).select_related("user")}
    changes, present = [], set()
    for okta_id, person in people.items():
        user = users.get(okta_id)
        membership = memberships.get(user.pk) if user is not None else None
        known = set(membership.idp_groups or []) & mapped if membership is not None else set()
        if person.status == DEPROVISIONED:  # deactivated in Okta: as if in no group (a removal below, if active)
            if membership is not None and membership.status == Membership.Status.SUSPENDED and \
                    membership.status_source == Membership.Source.ADMIN:  # offboarded, still the admin's decision
                changes.append(_change("remove", person, user, known, set(), "deactivated in Okta (suspended by an administrator)"))
            continue
        if user is not None:
            present.add(user.pk)
        if person.status == SUSPENDED:
            if membership is not None and membership.status == Membership.Status.ACTIVE:
                changes.append(_change("suspend", person, user, known, person.groups, "suspended in Okta"))
            continue
        if not person.email and user is None:
            continue  # nobody to create without an email (reported with the run's people count)
        if membership is None:
            changes.append(_change("add", person, user, set(), person.groups,
                                   "in Okta, not in the portal" if user is None else "in Okta, not a member of the tenant"))
        elif membership.status == Membership.Status.ACTIVE:
            if known != person.groups:
                changes.append(_change("update", person, user, known, person.groups, "mapped groups differ"))
        elif membership.status_source == Membership.Source.IDP:
            changes.append(_change("reinstate", person, user, known, person.groups,
                                   f"{membership.status} because of the IdP, in a mapped group again"))
        # else: an administrator offboarded or suspended them; that stands.
    for user_id, membership in memberships.items():
        if user_id in present or membership.status != Membership.Status.ACTIVE:
            continue
        known = set(membership.idp_groups or []) & mapped
        if membership.status_source == Membership.Source.IDP or known:
            changes.append(_change("remove", None, membership.user, known, set(), "in none of the mapped groups"
                                   " (or deactivated in Okta)"))
    changes.sort(key=lambda c: (ORDER[c["action"]], c["email"]))
    return Plan(changes=changes, people=people, mapped=mapped, users=users)


def _apply(tenant, plan: Plan, change: dict) -> None:
    person = plan.people.get(change["okta_id"]) if change["okta_id"] else None
    user = User.objects.filter(pk=change["user_id"]).first() if change["user_id"] else None
    if change["action"] == "suspend":
        lifecycle.offboard_person(tenant=tenant, user=user, actor=None, source=Membership.Source.IDP,
                                  status=Membership.Status.SUSPENDED, reason="Suspended in Okta (reconciliation).")
        return
    if user is None:
        from accounts.services import ensure_user
        user = ensure_user(email=person.email, full_name=person.name)
        change["user_id"] = user.pk
    membership = Membership.objects.filter(tenant=tenant, user=user).first()
    if change["action"] == "remove" and membership is not None and membership.status == Membership.Status.SUSPENDED:
        lifecycle.offboard_person(tenant=tenant, user=user, actor=None, source=membership.status_source,
                                  reason="Deactivated in Okta (reconciliation).")
        return
    kept = set(membership.idp_groups or []) - plan.mapped if membership is not None else set()  # groups no rule names
    groups = set(change["groups_after"]) | kept
    lifecycle.sync_groups(tenant=tenant, user=user, groups=sorted(groups), source=SOURCE)


def apply_plan(tenant, plan: Plan) -> tuple[int, int]:
    applied = failed = 0
    for change in plan.changes:
        try:  # no transaction around it: lifecycle commits as it goes (other processes end the terminals it marks)
            _apply(tenant, plan, change)
        except AccessError as exc:  # e.g. the POSIX name waits for a claim only the sign-in has
            change["applied"], change["error"] = False, str(exc)
            failed += 1
            continue
        except Exception as exc:  # one person's failure must not stop the others
            logger.exception("okta reconciliation of %s: %s of %s failed", tenant.slug, change["action"], change["email"])
            change["applied"], change["error"] = False, f"{type(exc).__name__}: {exc}"[:500]
            failed += 1
            continue
        change["applied"] = True
        applied += 1
    return applied, failed


def _abandon_stale(connection: OktaConnection) -> None:
    """A run whose process died never finishes: after OKTA_RUN_STALE it is marked failed, so others may start."""
    cutoff = timezone.now() - timedelta(seconds=settings.OKTA_RUN_STALE)
    SyncRun.objects.filter(connection=connection, status=SyncRun.Status.RUNNING, started_at__lt=cutoff).update(
        status=SyncRun.Status.FAILED, finished_at=timezone.now(), error="Abandoned: the process running it stopped.")


def start_run(connection: OktaConnection, *, dry_run: bool, trigger: str, actor=None) -> SyncRun | None:
    """A new running SyncRun, or None when another run of this tenant is going on."""
    _abandon_stale(connection)
    try:
        with transaction.atomic():
            return SyncRun.objects.create(connection=connection, tenant=connection.tenant, dry_run=dry_run, trigger=trigger,
                                          actor=actor if getattr(actor, "pk", None) else None)
    except IntegrityError:
        return None


def run_reconciliation(connection: OktaConnection, *, dry_run: bool | None = None, trigger: str = SyncRun.Trigger.SCHEDULE,
                       actor=None, client: OktaClient | None = None) -> SyncRun | None:
    """Read, plan and (unless dry) apply. Returns the finished run, or None if another run was going on."""
    dry = connection.dry_run if dry_run is None else dry_run
    run = start_run(connection, dry_run=dry, trigger=trigger, actor=actor)
    if run is None:
        logger.info("okta reconciliation of %s: another run is going on", connection.tenant.slug)
        return None
    tenant = connection.tenant
    client = client or OktaClient(connection)
    started = time.monotonic()
    plan = None
    try:
        names = sorted(set(AccessRule.objects.filter(tenant=tenant).values_list("group", flat=True)))
        if not names:
            raise OktaError("The tenant has no access rules, so no Okta group to read.")
        if not connection.has_credentials:
            raise OktaError("No API token or service app credentials are set.")
        people, run.groups = read_groups(client, names)
        run.people_read = len(people)
        plan = plan_changes(tenant, people, set(names))
        run.planned = len(plan.changes)
        limit = connection.max_removals
        if not dry and limit and plan.removals() > limit:
            raise OktaError(f"This run would offboard or suspend {plan.removals()} people, more than the limit of {limit}: "
                            "nothing was applied. Check the groups in Okta (a dry run lists them), then raise the limit.")
        if not dry:
            run.applied, run.failed = apply_plan(tenant, plan)
        run.status = SyncRun.Status.PARTIAL if run.failed else SyncRun.Status.OK
        run.changes = plan.changes[:MAX_RECORDED_CHANGES]
    except OktaError as exc:
        run.status, run.error = SyncRun.Status.FAILED, str(exc)
        if plan is not None and not run.changes:
            run.changes = plan.changes[:MAX_RECORDED_CHANGES]  # what it would have done, for the admin to check
    except Exception as exc:
        logger.exception("okta reconciliation of %s failed", tenant.slug)
        run.status, run.error = SyncRun.Status.FAILED, f"Unexpected error: {type(exc).__name__}: {exc}"[:2000]
    run.requests, run.rate_limit_wait = client.stats.requests, round(client.stats.rate_limit_wait, 3)
    run.finished_at = timezone.now()
    run.save()
    elapsed = time.monotonic() - started
    counts = {}
    for change in run.changes:
        counts[change["action"]] = counts.get(change["action"], 0) + 1
    record_event("okta.sync", tenant=tenant, actor=actor, target=run, data={
        "status": run.status, "dry_run": dry, "trigger": trigger, "seconds": round(elapsed, 3), "people_read": run.people_read,
        "planned": run.planned, "applied": run.applied, "failed": run.failed, "by_action": counts, "error": run.error[:500]})
    logger.info("okta reconciliation of %s: %s in %.1f s, %d people read, %d changes planned, %d applied, %d failed%s",
                tenant.slug, run.status, elapsed, run.people_read, run.planned, run.applied, run.failed,
                f": {run.error}" if run.error else "")
    return run
