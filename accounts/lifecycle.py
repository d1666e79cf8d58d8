"""Onboarding and offboarding: the one write path for a person's access, whoever asks.

The sign-in (groups seen at the IdP), the tenant admin's buttons, `manage.py offboard`, and the
provisioning sync (SCIM, Okta) all end here, and every change writes its audit event.

- `apply_access` turns an AccessDecision (accounts/access.py) into memberships and cluster accounts:
  clusters gained are onboarded, rule-granted clusters lost are revoked, no access at all offboards.
- `grant_cluster_access` creates the person's POSIX account on the head node (clusters/provisioning.py,
  with the tenant-wide name and uid of PosixIdentity) and their Slurm association, then makes the
  ClusterAccount active. A failure leaves it `pending` with the error; `retry_head_node_work` (a Celery
  beat task) tries again with backoff. Nobody can use a pending account.
- `offboard_person` revokes everything at once: cluster accounts, live terminals on every daphne
  process (terminal/actions.py), API tokens, web sessions, cached AWS credentials; then it locks the
  POSIX account on each head node (and, by tenant policy, ends its processes and cancels its jobs).
  A head node that does not answer is marked and retried; the portal-side revocation never waits for it.
"""

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from accounts.access import AccessDecision, AccessError, PosixPlan, next_free_uid
from accounts.models import ApiToken, Membership, Tenant, User
from audit.services import record_event
from clusters import provisioning
from clusters.models import Cluster, ClusterAccount, PosixIdentity

logger = logging.getLogger(__name__)

# Backoff for head-node work: 30 s, 1 min, 2 min, … up to an hour between tries.
RETRY_FIRST = timedelta(seconds=30)
RETRY_MAX = timedelta(hours=1)
# Work being tried is held this long (head_node_retry_at in the future), so the periodic retry does not run
# it a second time meanwhile; if the process trying it dies, the periodic retry takes it over after this.
CLAIM = timedelta(minutes=5)


class LifecycleError(AccessError):
    """The change cannot be made (the message says why, for an admin)."""


@dataclass
class OffboardReport:
    user: str
    tenant: str
    reason: str
    sessions_ended: list[str] = field(default_factory=list)
    tokens_revoked: int = 0
    clusters_locked: list[str] = field(default_factory=list)
    clusters_pending: dict[str, str] = field(default_factory=dict)  # cluster slug → error, retried

    def lines(self) -> list[str]:
        out = [f"Offboarded {self.user} from {self.tenant}: {self.reason}",
               f"  live terminal sessions ended: {len(self.sessions_ended)}",
               f"  API tokens revoked: {self.tokens_revoked}",
               "  web sessions signed out, AWS credentials forgotten in every process"]
        out += [f"  {slug}: POSIX account locked on the head node" for slug in self.clusters_locked]
        out += [f"  {slug}: head node did not answer ({error}); the lock is retried" for slug, error in self.clusters_pending.items()]
        return out


# --- identities -------------------------------------------------------------------------------


def ensure_posix_identity(tenant: Tenant, user: User, plan: PosixPlan, *, actor=None) -> PosixIdentity:
    """The person's tenant-wide POSIX name and uid, allocating the uid if new (serialised per tenant)."""
    existing = PosixIdentity.objects.filter(tenant=tenant, user=user).first()
    if existing is not None:
        return existing
    with transaction.atomic():
        Tenant.objects.select_for_update().filter(pk=tenant.pk).first()  # one allocation at a time per tenant
        uid = plan.uid if plan.uid is not None else next_free_uid(tenant)
        try:
            with transaction.atomic():
                identity = PosixIdentity.objects.create(tenant=tenant, user=user, username=plan.username, uid=uid)
        except IntegrityError:
            if plan.existing:  # a hand-made mapping several people share (the non-root demo): keep using it
                return PosixIdentity(tenant=tenant, user=user, username=plan.username, uid=uid)
            raise LifecycleError(f"The POSIX name {plan.username!r} or uid {uid} was just taken in {tenant.slug}; try again.") from None
    record_event("posix_identity.create", tenant=tenant, actor=actor, target=identity,
                 data={"user": user.email, "username": identity.username, "uid": identity.uid, "notes": plan.notes})
    return identity


# --- cluster accounts -------------------------------------------------------------------------


def grant_cluster_access(*, cluster: Cluster, user: User, identity: PosixIdentity, actor=None,
                         granted_by: str = ClusterAccount.Grant.ADMIN, reason: str = "", inline: bool = True) -> ClusterAccount:
    """Give `user` the use of `cluster` as their POSIX identity; make the account on the head node."""
    account = ClusterAccount.objects.filter(cluster=cluster, user=user).first()
    if account is not None and account.state == ClusterAccount.State.ACTIVE and not account.head_node_action:
        if account.granted_by != granted_by and granted_by == ClusterAccount.Grant.ADMIN:
            ClusterAccount.objects.filter(pk=account.pk).update(granted_by=granted_by)  # an admin's grant outlives rules
        return account
    action = ClusterAccount.HeadNodeAction.CREATE
    if account is None:
        account = ClusterAccount(cluster=cluster, user=user)
    elif account.state in (ClusterAccount.State.REVOKED, ClusterAccount.State.SUSPENDED) or \
            account.head_node_action == ClusterAccount.HeadNodeAction.LOCK:
        action = ClusterAccount.HeadNodeAction.UNLOCK  # a returning person: same uid, same home
    account.posix_username, account.uid = identity.username, identity.uid
    account.state = ClusterAccount.State.PENDING
    account.granted_by = granted_by
    account.head_node_action = action
    account.head_node_error, account.head_node_attempts, account.head_node_retry_at = "", 0, timezone.now() + CLAIM
    account.full_clean()
    account.save()
    record_event("cluster_account.grant", tenant=cluster.tenant, actor=actor, target=account,
                 data={"user": user.email, "cluster": cluster.slug, "posix_username": identity.username, "uid": identity.uid,
                       "granted_by": granted_by, "reason": reason})
    if inline and cluster.backend == Cluster.Backend.LOCAL:
        run_head_node_work(account)  # a local useradd takes a fraction of a second: active before the page loads
    else:
        _schedule(account)
    account.refresh_from_db()
    return account


def revoke_cluster_access(*, account: ClusterAccount, actor=None, reason: str, lock: bool = True) -> list[str]:
    """End `account`: no new sessions, live ones ended now, the POSIX account locked on the head node."""
    cluster = account.cluster
    ClusterAccount.objects.filter(pk=account.pk).update(
        state=ClusterAccount.State.REVOKED, updated_at=timezone.now(),
        head_node_action=ClusterAccount.HeadNodeAction.LOCK if lock else "", head_node_error="", head_node_attempts=0,
        head_node_retry_at=timezone.now() + CLAIM if lock else None,
    )
    from terminal.actions import revoke_terminal_sessions
    ended = revoke_terminal_sessions(actor=actor, user=account.user, cluster=cluster,
                                     message=f"Your access to {cluster.name} was revoked.")
    record_event("cluster_account.revoke", tenant=cluster.tenant, actor=actor, target=account,
                 data={"user": account.user.email, "cluster": cluster.slug, "reason": reason, "sessions": ended})
    account.refresh_from_db()
    return ended


def run_head_node_work(account: ClusterAccount) -> bool:
    """Do the head-node action the account waits for; True when done. Failures are recorded for retry."""
    action = account.head_node_action
    if not action:
        return True
    cluster = account.cluster
    tenant = cluster.tenant
    try:
        if action == ClusterAccount.HeadNodeAction.LOCK:
            result = provisioning.lock_posix_account(cluster, username=account.posix_username, uid=account.uid,
                                                     kill_processes=tenant.offboard_kill_processes,
                                                     cancel_jobs=tenant.offboard_cancel_jobs)
        else:
            slurm_account = cluster.slurm_account or None
            result = provisioning.create_posix_account(cluster, username=account.posix_username, uid=account.uid,
                                                       slurm_account=slurm_account)
            if action == ClusterAccount.HeadNodeAction.UNLOCK:
                unlocked = provisioning.unlock_posix_account(cluster, username=account.posix_username, uid=account.uid,
                                                             slurm_account=slurm_account)
                result.steps.extend(unlocked.steps)
    except provisioning.ProvisioningError as exc:
        return _head_node_failed(account, str(exc), retryable=exc.retryable)
    except Exception as exc:  # an unexpected failure must still leave a visible, retried state
        logger.exception("head-node %s of %s failed", action, account)
        return _head_node_failed(account, f"{type(exc).__name__}: {exc}", retryable=True)
    now = timezone.now()
    fields = {"head_node_action": "", "head_node_error": "", "head_node_retry_at": None, "head_node_done_at": now, "updated_at": now}
    if action != ClusterAccount.HeadNodeAction.LOCK:
        fields["state"] = ClusterAccount.State.ACTIVE
    # Only if nothing changed meanwhile (an offboarding may have replaced a pending create by a lock).
    done = ClusterAccount.objects.filter(pk=account.pk, head_node_action=action).update(**fields)
    if not done:  # changed meanwhile: done by another try, or replaced by other work
        return not ClusterAccount.objects.filter(pk=account.pk).exclude(head_node_action="").exists()
    if done:
        record_event(f"cluster_account.head_node.{action}", tenant=tenant, target=account,
                     data={"cluster": cluster.slug, "posix_username": account.posix_username, "uid": account.uid,
                           "steps": result.steps})
    return bool(done)


def _head_node_failed(account: ClusterAccount, error: str, *, retryable: bool) -> bool:
    attempts = account.head_node_attempts + 1
    delay = min(RETRY_FIRST * (2 ** (attempts - 1)), RETRY_MAX)
    ClusterAccount.objects.filter(pk=account.pk, head_node_action=account.head_node_action).update(
        head_node_error=error[:2000], head_node_attempts=attempts,
        head_node_retry_at=timezone.now() + delay if retryable else None, updated_at=timezone.now(),
    )
    record_event(f"cluster_account.head_node.{account.head_node_action}.fail", tenant=account.cluster.tenant, target=account,
                 data={"cluster": account.cluster.slug, "error": error[:500], "attempt": attempts,
                       "retry_in_seconds": int(delay.total_seconds()) if retryable else None})
    logger.warning("head-node %s of %s failed (attempt %d, %s): %s", account.head_node_action, account, attempts,
                   "retried" if retryable else "not retried", error)
    return False


def _schedule(account: ClusterAccount) -> None:
    """Run the head-node work in a Celery worker now; the beat task picks it up anyway if this fails."""
    from accounts.tasks import head_node_work

    def send():
        try:
            head_node_work.delay(account.pk)
        except Exception as exc:  # broker down: retry_head_node_work finds it by head_node_retry_at
            logger.warning("could not queue head-node work for %s (%s); the periodic retry will do it", account, exc)
    transaction.on_commit(send)


def retry_head_node_work(limit: int = 50) -> int:
    """Run the head-node work that is due (beat calls this every few seconds). Returns how many were tried."""
    due = ClusterAccount.objects.exclude(head_node_action="").filter(head_node_retry_at__lte=timezone.now()) \
        .select_related("cluster__tenant", "user").order_by("head_node_retry_at")[:limit]
    tried = 0
    for account in due:
        claimed = ClusterAccount.objects.filter(pk=account.pk, head_node_action=account.head_node_action,
                                                head_node_retry_at__lte=timezone.now()) \
            .update(head_node_retry_at=timezone.now() + CLAIM)
        if claimed:  # not taken by another worker meanwhile
            tried += 1
            run_head_node_work(account)
    return tried


def retry_now(account: ClusterAccount, *, actor) -> bool:
    """An admin's "retry": run the pending head-node work at once."""
    if not account.head_node_action:
        return True
    record_event("cluster_account.head_node.retry", tenant=account.cluster.tenant, actor=actor, target=account,
                 data={"action": account.head_node_action})
    return run_head_node_work(account)


# --- people -----------------------------------------------------------------------------------


def _set_membership(tenant, user, *, role: str, status: str, source: str, reason: str, actor) -> Membership:
    membership, created = Membership.objects.get_or_create(
        tenant=tenant, user=user, defaults={"role": role, "status": status, "status_source": source,
                                            "status_reason": reason, "status_changed_at": timezone.now()})
    changed = created or membership.role != role or membership.status != status
    if not created and changed:
        if membership.status != status:
            membership.status_changed_at = timezone.now()
            membership.status_reason = reason[:500]
            membership.status_source = source
        membership.role, membership.status = role, status
        membership.save(update_fields=["role", "status", "status_source", "status_reason", "status_changed_at"])
    if changed:
        record_event("membership.set", tenant=tenant, actor=actor, target=membership,
                     data={"user": user.email, "role": role, "status": status, "source": source, "reason": reason})
    return membership


def apply_access(*, tenant: Tenant, user: User, decision: AccessDecision, groups: list[str], actor=None,
                 source: str = "sign-in") -> Membership | None:
    """Make the person's access in `tenant` what their groups say. Returns the active membership or None.

    An admin's offboarding or suspension is not undone here; an offboarding because the groups gave
    nothing is undone once they give something again.
    """
    membership = Membership.objects.filter(tenant=tenant, user=user).first()
    if membership is not None and membership.idp_groups != groups:
        Membership.objects.filter(pk=membership.pk).update(idp_groups=groups)
    if not decision.grants_access:
        if membership is not None and membership.status == Membership.Status.ACTIVE:
            offboard_person(tenant=tenant, user=user, actor=actor, source=Membership.Source.IDP,
                            reason=f"The identity provider's groups no longer give access ({source}).")
        return None
    if membership is not None and membership.status != Membership.Status.ACTIVE and membership.status_source == Membership.Source.ADMIN:
        return None  # an admin decided; only an admin reinstates
    if decision.posix is None:
        raise AccessError(decision.posix_error or "No POSIX name could be made.")
    identity = ensure_posix_identity(tenant, user, decision.posix, actor=actor)
    membership = _set_membership(tenant, user, role=decision.role, status=Membership.Status.ACTIVE,
                                 source=Membership.Source.IDP, reason=f"granted by the groups {', '.join(decision.matched_groups)}",
                                 actor=actor)
    if membership.idp_groups != groups:
        Membership.objects.filter(pk=membership.pk).update(idp_groups=groups)
        membership.idp_groups = groups
    wanted = {c.pk for c in decision.clusters}
    for cluster in decision.clusters:
        grant_cluster_access(cluster=cluster, user=user, identity=identity, actor=actor, granted_by=ClusterAccount.Grant.RULE,
                             reason=f"{source}: groups {', '.join(decision.matched_groups)}")
    lost = ClusterAccount.objects.filter(cluster__tenant=tenant, user=user, granted_by=ClusterAccount.Grant.RULE) \
        .exclude(cluster_id__in=wanted).exclude(state=ClusterAccount.State.REVOKED).select_related("cluster", "user")
    for account in lost:
        revoke_cluster_access(account=account, actor=actor, reason=f"{source}: no group gives {account.cluster.slug} any more")
    return membership


def sync_groups(*, tenant: Tenant, user: User, groups: list[str], source: str, actor=None) -> Membership | None:
    """Apply what `groups` give `user` in `tenant`, as the IdP's directory says them (SCIM, Okta sync, event hooks).

    The same decision as at sign-in (accounts/access.py), for a person who may never have signed in: their
    POSIX name comes from the tenant's rule applied to their email. No matching group offboards an active
    member (source idp); an admin's offboarding or suspension stands. Returns the active membership or None.
    """
    from accounts.access import evaluate_access
    from accounts.oidc import provider_for_tenant
    provider = provider_for_tenant(tenant)
    claims = {"email": user.email, "sub": str(user.pk)}
    decision = evaluate_access(tenant, sorted(set(groups)), user=user, claims=claims,
                               posix_name_claim="")  # a chosen claim is not in the directory's data: the email rule
    if provider is not None and provider.posix_name_claim and decision.posix is not None and not decision.posix.existing:
        # The tenant names people from a claim only the IdP's token carries: wait for their first sign-in.
        decision.posix, decision.posix_error = None, (f"The tenant takes POSIX names from the {provider.posix_name_claim!r} "
                                                      "claim: the account is set up at the person's first sign-in.")
    return apply_access(tenant=tenant, user=user, decision=decision, groups=sorted(set(groups)), actor=actor, source=source)


def onboard_person(*, tenant: Tenant, email: str, role: str, clusters: list[Cluster], actor, full_name: str = "",
                   posix_plan: PosixPlan | None = None, reason: str = "") -> Membership:
    """An admin adds (or reinstates) a person: membership, POSIX identity, and access to `clusters`."""
    from accounts.access import plan_posix_identity
    from accounts.services import ensure_user
    user = ensure_user(email=email, full_name=full_name, actor=actor)
    plan = posix_plan or plan_posix_identity(tenant, user=user, claims={"email": user.email})
    identity = ensure_posix_identity(tenant, user, plan, actor=actor)
    membership = _set_membership(tenant, user, role=role, status=Membership.Status.ACTIVE, source=Membership.Source.ADMIN,
                                 reason=reason or f"onboarded by {getattr(actor, 'email', 'the system')}", actor=actor)
    for cluster in clusters:
        if cluster.tenant_id != tenant.pk:
            raise LifecycleError(f"{cluster.slug} is not a cluster of {tenant.slug}.")
        grant_cluster_access(cluster=cluster, user=user, identity=identity, actor=actor, granted_by=ClusterAccount.Grant.ADMIN,
                             reason=reason or "onboarded")
    return membership


def offboard_person(*, tenant: Tenant, user: User, actor, reason: str, source: str = Membership.Source.ADMIN,
                    status: str = Membership.Status.OFFBOARDED) -> OffboardReport:
    """Revoke everything `user` has in `tenant`, now. Re-onboarding later restores the same uid and home."""
    from terminal.actions import revoke_terminal_sessions, wait_until_ended
    report = OffboardReport(user=user.email, tenant=tenant.slug, reason=reason)
    suspend = status == Membership.Status.SUSPENDED
    membership = Membership.objects.filter(tenant=tenant, user=user).first()
    if membership is not None:
        _set_membership(tenant, user, role=membership.role, status=status, source=source, reason=reason, actor=actor)
    # Portal side first, all of it at once: nothing here waits for a head node.
    accounts = list(ClusterAccount.objects.filter(cluster__tenant=tenant, user=user).exclude(state=ClusterAccount.State.REVOKED)
                    .select_related("cluster"))
    now = timezone.now()
    for account in accounts:
        ClusterAccount.objects.filter(pk=account.pk).update(
            state=ClusterAccount.State.SUSPENDED if suspend else ClusterAccount.State.REVOKED, updated_at=now,
            head_node_action="" if suspend else ClusterAccount.HeadNodeAction.LOCK, head_node_error="", head_node_attempts=0,
            head_node_retry_at=None if suspend else now + CLAIM)
    report.sessions_ended = revoke_terminal_sessions(actor=actor, user=user, tenant=tenant,
                                                     message=f"Your access to {tenant.name} was {'suspended' if suspend else 'revoked'}.")
    if not suspend:
        report.tokens_revoked = ApiToken.objects.filter(user=user, tenant=tenant, revoked_at__isnull=True).update(revoked_at=now)
    User.objects.filter(pk=user.pk).update(session_generation=F("session_generation") + 1)  # every web session, at its next request
    record_event("person.suspend" if suspend else "person.offboard", tenant=tenant, actor=actor, target=user,
                 data={"user": user.email, "reason": reason, "source": source, "sessions": report.sessions_ended,
                       "api_tokens_revoked": report.tokens_revoked, "clusters": [a.cluster.slug for a in accounts]})
    if suspend:
        return report
    # Then the head nodes; one that does not answer is retried and shown as pending. The lock also ends the
    # person's processes: first let the portal end their terminals, so those end as revoked, not killed.
    if report.sessions_ended:
        wait_until_ended(report.sessions_ended, timeout=3.0)
    for account in ClusterAccount.objects.filter(pk__in=[a.pk for a in accounts]).select_related("cluster__tenant", "user"):
        if run_head_node_work(account):
            report.clusters_locked.append(account.cluster.slug)
        else:
            account.refresh_from_db()
            report.clusters_pending[account.cluster.slug] = account.head_node_error
    return report


def change_role(*, tenant: Tenant, user: User, role: str, actor) -> Membership:
    """An admin makes someone an admin or a member. A later sign-in applies the IdP's groups again."""
    membership = Membership.objects.filter(tenant=tenant, user=user).first()
    if membership is None:
        raise LifecycleError(f"{user.email} is not a member of {tenant.slug}.")
    if role not in Membership.Role.values:
        raise LifecycleError(f"Unknown role {role!r}.")
    return _set_membership(tenant, user, role=role, status=membership.status, source=membership.status_source,
                           reason=membership.status_reason, actor=actor)


def suspend_person(*, tenant: Tenant, user: User, actor, reason: str) -> OffboardReport:
    """Block the person for now: sessions and web sign-ins end, tokens stop working; nothing on the head nodes changes."""
    return offboard_person(tenant=tenant, user=user, actor=actor, reason=reason, status=Membership.Status.SUSPENDED)


def reinstate_person(*, tenant: Tenant, user: User, actor, reason: str = "") -> Membership:
    """Undo a suspension or an offboarding: the membership is active again and every account returns."""
    membership = Membership.objects.filter(tenant=tenant, user=user).first()
    if membership is None:
        raise LifecycleError(f"{user.email} was never a member of {tenant.slug}.")
    identity = PosixIdentity.objects.filter(tenant=tenant, user=user).first()
    membership = _set_membership(tenant, user, role=membership.role, status=Membership.Status.ACTIVE, source=Membership.Source.ADMIN,
                                 reason=reason or f"reinstated by {getattr(actor, 'email', 'the system')}", actor=actor)
    for account in ClusterAccount.objects.filter(cluster__tenant=tenant, user=user).select_related("cluster__tenant"):
        if identity is None:
            identity = ensure_posix_identity(tenant, user, PosixPlan(account.posix_username, account.uid, existing=True), actor=actor)
        grant_cluster_access(cluster=account.cluster, user=user, identity=identity, actor=actor, granted_by=account.granted_by,
                             reason="reinstated")
    return membership
