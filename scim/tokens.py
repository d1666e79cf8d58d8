"""SCIM bearer tokens: `cst_<prefix>_<secret>`, one or more per tenant, shown once, stored hashed, revocable.

The tenant of a SCIM request is the token's tenant: nothing in the URL names it.
"""

import hashlib
import hmac
import secrets

from django.utils import timezone

from audit.services import record_event
from scim.models import ScimToken

TOKEN_PREFIX = "cst"  # noqa: S105 (the token's label, not a secret)


def create_scim_token(*, tenant, name: str, actor=None) -> tuple[ScimToken, str]:
    """Returns (the token row, the token text). The text is shown once and never stored."""
    name = name.strip()[:100] or "SCIM"
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    token = ScimToken.objects.create(tenant=tenant, name=name, prefix=prefix,
                                     secret_hash=hashlib.sha256(secret.encode()).hexdigest(),
                                     created_by=actor if getattr(actor, "pk", None) else None)
    record_event("scim_token.create", tenant=tenant, actor=actor, target=token, data={"name": token.name, "prefix": prefix})
    return token, f"{TOKEN_PREFIX}_{prefix}_{secret}"


def revoke_scim_token(token: ScimToken, *, actor=None) -> bool:
    """Revoke the token (at once: the next request with it is refused). False when it already was."""
    updated = ScimToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    if updated:
        token.refresh_from_db()
        record_event("scim_token.revoke", tenant=token.tenant, actor=actor, target=token,
                     data={"name": token.name, "prefix": token.prefix})
    return bool(updated)


def token_prefix(text: str) -> str | None:
    """The prefix of a well-formed token text (the throttle's key), else None."""
    parts = text.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1][:16]


def authenticate_scim_token(text: str) -> ScimToken | None:
    """The usable ScimToken for `cst_<prefix>_<secret>`, or None. Constant-time on the secret."""
    prefix = token_prefix(text)
    if prefix is None:
        return None
    token = ScimToken.objects.select_related("tenant").filter(prefix=prefix).first()
    secret = text.split("_", 2)[2]
    if token is None or not hmac.compare_digest(token.secret_hash, hashlib.sha256(secret.encode()).hexdigest()):
        return None
    if token.revoked_at is not None:
        return None
    now = timezone.now()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        ScimToken.objects.filter(pk=token.pk).update(last_used_at=now)  # bookkeeping, at most once a minute
    return token
