"""A tenant's Okta org: how to read its groups, the reconciliation runs, and the event-hook deliveries.

Secrets: the API token and the service app's private key are sealed (clusterra/sealed.py); the event
hook's secret is kept only as a SHA-256 (the portal compares what Okta sends, it never sends it back).
"""

import hashlib
import hmac
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import Tenant

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def clean_org_url(url: str) -> str:
    """`https://acme.okta.com` (no path, query, fragment or user); http only for a server on this machine."""
    parts = urlsplit((url or "").strip())
    if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in LOCAL_HOSTS):
        raise ValidationError("The Okta org URL must be https:// (http only for a server on this machine).")
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ValidationError("Give the org URL alone, such as https://acme.okta.com (no path, query or user).")
    return f"{parts.scheme}://{parts.netloc}"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class OktaConnection(models.Model):
    """How the portal reads one tenant's Okta org, and the secret Okta's event hook presents."""

    class Auth(models.TextChoices):
        TOKEN = "token", "API token (SSWS)"
        OAUTH = "oauth", "OAuth 2.0 service app (private key JWT)"

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="okta_connection")
    org_url = models.URLField(max_length=300, help_text="Your Okta org, such as https://acme.okta.com.")
    auth_method = models.CharField(max_length=8, choices=Auth.choices, default=Auth.TOKEN)
    api_token_sealed = models.TextField(blank=True)
    client_id = models.CharField(max_length=255, blank=True, help_text="The service app's client id (OAuth only).")
    private_key_sealed = models.TextField(blank=True)
    key_id = models.CharField(max_length=255, blank=True, help_text="The kid of the service app's public key in Okta (OAuth only).")
    enabled = models.BooleanField(default=False, help_text="Reconcile on a schedule (Celery beat).")
    dry_run = models.BooleanField(default=True, help_text="Scheduled runs only report the drift; nothing is changed.")
    max_removals = models.PositiveIntegerField(
        default=25, help_text="A run that would offboard or suspend more people than this applies nothing and fails "
                              "(a group emptied by mistake). 0: no limit.")
    hook_secret_hash = models.CharField(max_length=64, blank=True)
    hook_secret_set_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    TOKEN_PURPOSE = "okta api token"  # noqa: S105 (key-derivation labels, not secrets)
    KEY_PURPOSE = "okta service app key"

    def __str__(self):
        return f"Okta {self.org_url} ({self.tenant.slug})"

    def clean(self):
        try:
            self.org_url = clean_org_url(self.org_url)
        except ValidationError as exc:
            raise ValidationError({"org_url": exc.messages}) from None

    # --- secrets ---
    def set_api_token(self, token: str) -> None:
        from clusterra import sealed
        self.api_token_sealed = sealed.seal(token, self.TOKEN_PURPOSE) if token else ""

    def api_token(self) -> str:
        from clusterra import sealed
        return sealed.unseal(self.api_token_sealed, self.TOKEN_PURPOSE) if self.api_token_sealed else ""

    def set_private_key(self, pem: str) -> None:
        from clusterra import sealed
        self.private_key_sealed = sealed.seal(pem, self.KEY_PURPOSE) if pem else ""

    def private_key(self) -> str:
        from clusterra import sealed
        return sealed.unseal(self.private_key_sealed, self.KEY_PURPOSE) if self.private_key_sealed else ""

    @property
    def has_credentials(self) -> bool:
        if self.auth_method == self.Auth.OAUTH:
            return bool(self.client_id and self.private_key_sealed)
        return bool(self.api_token_sealed)

    def hook_secret_matches(self, presented: str | None) -> bool:
        """Constant-time: the same work whether or not a secret is set or the header is there."""
        wanted = self.hook_secret_hash or "0" * 64
        ok = hmac.compare_digest(hash_secret(presented or ""), wanted)
        return ok and bool(self.hook_secret_hash) and bool(presented)


class SyncRun(models.Model):
    """One reconciliation: what was read from Okta, the drift found, and what was applied."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        OK = "ok", "Done"
        PARTIAL = "partial", "Done, some changes failed"
        FAILED = "failed", "Failed: nothing applied"

    class Trigger(models.TextChoices):
        SCHEDULE = "schedule", "Schedule"
        ADMIN = "admin", "An administrator"
        COMMAND = "command", "manage.py okta_sync"

    connection = models.ForeignKey(OktaConnection, on_delete=models.CASCADE, related_name="runs")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="okta_runs")
    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.SCHEDULE)
    actor = models.ForeignKey("accounts.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    dry_run = models.BooleanField(default=False)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    groups = models.JSONField(default=list, blank=True, help_text="Each group read: name, Okta id, members.")
    people_read = models.PositiveIntegerField(default=0)
    requests = models.PositiveIntegerField(default=0)
    rate_limit_wait = models.FloatField(default=0, help_text="Seconds spent waiting for Okta's rate limit.")
    planned = models.PositiveIntegerField(default=0)
    applied = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    changes = models.JSONField(default=list, blank=True, help_text="The drift: one entry per person to change.")
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        # Two runs of one tenant never overlap: starting one while another runs fails on this.
        constraints = [models.UniqueConstraint(fields=["connection"], condition=Q(status="running"), name="one_running_okta_sync")]

    def __str__(self):
        return f"Okta sync of {self.tenant.slug} at {self.started_at:%Y-%m-%d %H:%M} ({self.status})"

    @property
    def duration(self) -> float | None:
        return (self.finished_at - self.started_at).total_seconds() if self.finished_at else None


class HookEvent(models.Model):
    """One event of an Okta event-hook delivery. Okta delivers at least once: the event's uuid is unique."""

    class Status(models.TextChoices):
        RECEIVED = "received", "Being processed"
        DONE = "done", "Done"
        IGNORED = "ignored", "Nothing to do"
        FAILED = "failed", "Failed"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="okta_hook_events")
    event_id = models.CharField(max_length=64, help_text="Okta's event uuid.")
    event_type = models.CharField(max_length=100)
    published = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    target = models.CharField(max_length=300, blank=True, help_text="The Okta user's login.")
    group = models.CharField(max_length=255, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RECEIVED)
    result = models.TextField(blank=True)
    deliveries = models.PositiveIntegerField(default=1, help_text="How many times Okta sent it.")

    class Meta:
        ordering = ["-received_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["tenant", "event_id"], name="one_okta_event_per_uuid")]

    def __str__(self):
        return f"{self.event_type} {self.target} ({self.status})"
