"""Local password sign-in, unless every tenant of the person has turned it off (SSO only)."""

from django.contrib.auth.backends import ModelBackend

from accounts.tenancy import active_memberships


def password_sign_in_allowed(user) -> bool:
    """Platform operators (no tenant) keep their password; members need one tenant that still allows it."""
    memberships = active_memberships(user).select_related("tenant")
    if not memberships:
        return True
    return any(m.tenant.local_signin_enabled for m in memberships)


class PasswordBackend(ModelBackend):
    def user_can_authenticate(self, user):
        return super().user_can_authenticate(user) and password_sign_in_allowed(user)
