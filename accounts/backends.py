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
    def authenticate(self, request, username=None, password=None, **kwargs):
        # Checked when a password is presented, not in user_can_authenticate: that one also runs for every
        # request of a signed-in session (get_user), where the query would cost every page and socket.
        user = super().authenticate(request, username=username, password=password, **kwargs)
        return user if user is not None and password_sign_in_allowed(user) else None
