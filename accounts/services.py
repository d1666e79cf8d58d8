"""Write path for users' own settings."""

from audit.services import record_event


def set_terminal_renderer(user, renderer: str) -> None:
    if user.terminal_renderer == renderer:
        return
    user.terminal_renderer = renderer
    user.save(update_fields=["terminal_renderer"])
    record_event("account.preferences.update", actor=user, target=user, data={"terminal_renderer": renderer})


def update_preferences(user, *, full_name: str, terminal_renderer: str) -> None:
    user.full_name = full_name
    user.terminal_renderer = terminal_renderer
    user.save(update_fields=["full_name", "terminal_renderer"])
    record_event("account.preferences.update", actor=user, target=user, data={"terminal_renderer": terminal_renderer})


def ensure_tenant(*, slug: str, name: str, actor=None):
    from accounts.models import Tenant

    tenant, created = Tenant.objects.get_or_create(slug=slug, defaults={"name": name})
    if created:
        record_event("tenant.create", tenant=tenant, actor=actor, target=tenant, data={"name": name})
    return tenant


def ensure_user(*, email: str, password: str | None = None, full_name: str = "", actor=None):
    """Create the user if missing; set the password when one is given (the demo re-runs this)."""
    from accounts.models import User

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
    from accounts.models import Membership

    membership, created = Membership.objects.get_or_create(tenant=tenant, user=user, defaults={"role": role})
    if created or membership.role != role:
        membership.role = role
        membership.save(update_fields=["role"])
        record_event("membership.set", tenant=tenant, actor=actor, target=membership, data={"user": user.email, "role": role})
    return membership
