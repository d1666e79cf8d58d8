"""Write paths for users, tenants, memberships and API tokens (each writes its audit event)."""

import hashlib
import hmac
import secrets
from datetime import timedelta

from django.db.models import Exists, OuterRef
from django.utils import timezone

from accounts.models import AccessRule, ApiToken, Membership, Tenant, User
from accounts.tenancy import active_memberships
from audit.services import record_event


def record_password_sign_in(*, email: str, user, client_address: str | None, reason: str = "") -> None:
    """Audit a password sign-in: `reason` empty for a success, else why it was refused (never the password).

    The event goes to each tenant the person is an active member of (their admins see it there), or to
    the system chain for an email that matches no tenant member.
    """
    action = "auth.sign_in.refused" if reason else "auth.sign_in"
    data = {"method": "password", "email": email, **({"reason": reason} if reason else {})}
    tenants = [m.tenant for m in active_memberships(user).select_related("tenant")] if user is not None else []
    for tenant in tenants or [None]:
        record_event(action, tenant=tenant, actor=user, target=user, client_address=client_address, data=data)
    if user is not None and not reason:
        User.objects.filter(pk=user.pk).update(last_sign_in_at=timezone.now())


def set_terminal_renderer(user, renderer: str) -> None:
    if user.terminal_renderer == renderer:
        return
    user.terminal_renderer = renderer
    user.save(update_fields=["terminal_renderer"])
    record_event("account.preferences.update", actor=user, target=user, data={"terminal_renderer": renderer})


def update_preferences(user, *, full_name: str, terminal_renderer: str, time_zone: str = "") -> None:
    user.full_name = full_name
    user.terminal_renderer = terminal_renderer
    user.time_zone = time_zone
    user.save(update_fields=["full_name", "terminal_renderer", "time_zone"])
    record_event("account.preferences.update", actor=user, target=user,
                 data={"terminal_renderer": terminal_renderer, "time_zone": time_zone})


def ensure_tenant(*, slug: str, name: str, actor=None):
    tenant, created = Tenant.objects.get_or_create(slug=slug, defaults={"name": name})
    if created:
        record_event("tenant.create", tenant=tenant, actor=actor, target=tenant, data={"name": name})
    return tenant


def ensure_user(*, email: str, password: str | None = None, full_name: str = "", actor=None):
    """Create the user if missing; set the password when one is given (the demo re-runs this)."""
    user = User.objects.filter(email=email.lower()).first()
    if user is None:
        user = User.objects.create_user(email, password, full_name=full_name)
        record_event("user.create", actor=actor, target=user, data={"email": user.email})
    elif password is not None and not user.check_password(password):
        user.set_password(password)
        user.save(update_fields=["password"])
        record_event("user.password.set", actor=actor, target=user)
    return user


def set_membership(*, tenant, user, role: str, actor=None):
    membership, created = Membership.objects.get_or_create(tenant=tenant, user=user, defaults={"role": role})
    if created or membership.role != role:
        membership.role = role
        membership.save(update_fields=["role"])
        record_event("membership.set", tenant=tenant, actor=actor, target=membership, data={"user": user.email, "role": role})
    return membership


def create_api_token(*, user, tenant, name: str, days: int = 90, actor=None):
    """Returns (token row, the token text). The text is shown once and never stored."""
    if not active_memberships(user).filter(tenant=tenant).exists():
        raise ValueError(f"{user.email} is not a member of {tenant.slug}")
    if not 1 <= days <= 366:
        raise ValueError("Tokens last 1 to 366 days")
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user, tenant=tenant, name=name[:100], prefix=prefix, secret_hash=hashlib.sha256(secret.encode()).hexdigest(),
        expires_at=timezone.now() + timedelta(days=days),
    )
    record_event("api_token.create", tenant=tenant, actor=actor or user, target=token, data={"name": token.name, "days": days})
    return token, f"ctk_{prefix}_{secret}"


def revoke_api_token(token, *, actor) -> None:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        record_event("api_token.revoke", tenant=token.tenant, actor=actor, target=token)


def authenticate_api_token(text: str):
    """The usable ApiToken for `ctk_<prefix>_<secret>`, or None. Constant-time on the secret."""
    parts = text.split("_", 2)
    if len(parts) != 3 or parts[0] != "ctk":
        return None
    member = Membership.objects.filter(user=OuterRef("user"), tenant=OuterRef("tenant"), status=Membership.Status.ACTIVE)
    token = ApiToken.objects.select_related("user", "tenant").filter(prefix=parts[1]) \
        .annotate(member=Exists(member)).first()  # one query per API request, the membership included
    if token is None or not hmac.compare_digest(token.secret_hash, hashlib.sha256(parts[2].encode()).hexdigest()):
        return None
    if not token.is_usable or not token.member:
        return None
    now = timezone.now()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)  # bookkeeping, at most once a minute
    return token


def ensure_access_rule(*, tenant, group: str, role: str, clusters, actor=None) -> AccessRule:
    """Create the rule if missing (the demo re-runs this); an existing rule is left as the admin set it."""
    rule, created = AccessRule.objects.get_or_create(tenant=tenant, group=group, defaults={"role": role})
    if created:
        rule.clusters.set(clusters)
        record_event("access_rule.create", tenant=tenant, actor=actor, target=rule,
                     data={"group": group, "role": role, "clusters": [c.slug for c in clusters]})
    return rule


def save_access_rule(rule: AccessRule, *, clusters, actor) -> AccessRule:
    """Create or change a rule (the admin console). Applied at each person's next sign-in or sync."""
    created = rule.pk is None
    rule.full_clean()
    rule.save()
    rule.clusters.set(clusters)
    record_event("access_rule.create" if created else "access_rule.update", tenant=rule.tenant, actor=actor, target=rule,
                 data={"group": rule.group, "role": rule.role, "clusters": sorted(c.slug for c in clusters)})
    return rule


def delete_access_rule(rule: AccessRule, *, actor) -> None:
    record_event("access_rule.delete", tenant=rule.tenant, actor=actor, target=rule, data={"group": rule.group, "role": rule.role})
    rule.delete()


IDENTITY_PROVIDER_SETTINGS = ("name", "issuer", "client_id", "scopes", "groups_claim", "posix_name_claim", "email_domains", "enabled")
TENANT_POLICY_SETTINGS = ("local_signin_enabled", "uid_range_start", "uid_range_end", "offboard_kill_processes", "offboard_cancel_jobs",
                          "recording_retention_days")


def _changes(before, after, names) -> dict:
    return {name: [getattr(before, name), getattr(after, name)] for name in names if getattr(before, name) != getattr(after, name)}


def save_identity_provider(provider, *, actor, client_secret: str = ""):
    """Create or change a tenant's IdP (the admin console). A blank `client_secret` keeps the stored one.

    The secret is stored sealed and never written to the audit event (only whether it changed). The
    discovery cache of the old and new issuer is dropped, so the next sign-in uses the new settings.
    """
    from accounts.models import IdentityProvider
    from accounts.oidc import forget_cached
    before = IdentityProvider.objects.filter(pk=provider.pk).first() if provider.pk else None
    if client_secret:
        provider.set_client_secret(client_secret)
    provider.full_clean()
    provider.save()
    for issuer in {provider.issuer, getattr(before, "issuer", provider.issuer)}:
        forget_cached(issuer)
    if before is None:
        data = {name: getattr(provider, name) for name in IDENTITY_PROVIDER_SETTINGS}
    else:
        data = {"changes": _changes(before, provider, IDENTITY_PROVIDER_SETTINGS)}
    data["client_secret"] = "changed" if client_secret else "unchanged"
    if before is None or data.get("changes") or client_secret:
        record_event("identity_provider.create" if before is None else "identity_provider.update", tenant=provider.tenant,
                     actor=actor, target=provider, data=data)
    return provider


def save_tenant_policy(tenant, *, actor, **settings) -> dict:
    """Change the tenant's policy (local sign-in, uid range, what offboarding does, how long recordings are kept).
    Returns the changes."""
    unknown = set(settings) - set(TENANT_POLICY_SETTINGS)
    if unknown:
        raise ValueError(f"Not a policy setting: {', '.join(sorted(unknown))}")
    before = Tenant.objects.get(pk=tenant.pk)
    for name, value in settings.items():
        setattr(tenant, name, value)
    tenant.full_clean()
    changes = _changes(before, tenant, TENANT_POLICY_SETTINGS)
    if changes:
        tenant.save(update_fields=list(changes))
        record_event("tenant.policy.update", tenant=tenant, actor=actor, target=tenant, data={"changes": changes})
    return changes
