"""The write path for a tenant's Okta connection: settings, credentials (sealed) and the hook secret. Audited."""

import secrets

from django.utils import timezone

from audit.services import record_event
from okta.models import OktaConnection, hash_secret

SETTINGS = ("org_url", "auth_method", "client_id", "key_id", "enabled", "dry_run", "max_removals")


def save_connection(connection: OktaConnection, *, actor, api_token: str = "", private_key: str = "") -> OktaConnection:
    """Create or change the connection. Blank credentials keep the stored ones; none is ever written to the audit trail."""
    before = OktaConnection.objects.filter(pk=connection.pk).first() if connection.pk else None
    if api_token:
        connection.set_api_token(api_token)
    if private_key:
        connection.set_private_key(private_key)
    connection.full_clean()
    connection.save()
    if before is None:
        data = {name: getattr(connection, name) for name in SETTINGS}
    else:
        data = {"changes": {name: [getattr(before, name), getattr(connection, name)] for name in SETTINGS
                            if getattr(before, name) != getattr(connection, name)}}
    data.update(api_token="changed" if api_token else "unchanged", private_key="changed" if private_key else "unchanged")
    if before is None or data.get("changes") or api_token or private_key:
        record_event("okta.connection.create" if before is None else "okta.connection.update", tenant=connection.tenant,
                     actor=actor, target=connection, data=data)
    return connection


def new_hook_secret(connection: OktaConnection, *, actor) -> str:
    """A new event-hook secret (the old one stops working now). Returned once: only its SHA-256 is kept."""
    secret = secrets.token_urlsafe(32)
    replaced = bool(connection.hook_secret_hash)
    connection.hook_secret_hash, connection.hook_secret_set_at = hash_secret(secret), timezone.now()
    connection.save(update_fields=["hook_secret_hash", "hook_secret_set_at", "updated_at"])
    record_event("okta.hook_secret.set", tenant=connection.tenant, actor=actor, target=connection, data={"replaced": replaced})
    return secret


def clear_hook_secret(connection: OktaConnection, *, actor) -> None:
    """Turn the event hook off: every delivery is refused until a new secret is made."""
    connection.hook_secret_hash, connection.hook_secret_set_at = "", None
    connection.save(update_fields=["hook_secret_hash", "hook_secret_set_at", "updated_at"])
    record_event("okta.hook_secret.clear", tenant=connection.tenant, actor=actor, target=connection)
