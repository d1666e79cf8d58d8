"""Append-only, tamper-evident audit events (docs/audit.md).

Each tenant's events form a hash chain, as do the events without a tenant ("system"): every event
carries its chain's sequence number, the hash of the previous event and its own hash over its content.
Events are inserted unsealed (sequence NULL) inside the caller's transaction and sealed right after it
commits (audit/chain.py), so writers never hold a chain-wide lock during their own transaction.
"""

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class AuditEvent(models.Model):
    """Something that happened, who did it, and to what. Rows are never updated or deleted."""

    tenant = models.ForeignKey("accounts.Tenant", null=True, blank=True, on_delete=models.PROTECT, related_name="audit_events")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    actor_label = models.CharField(max_length=254, blank=True, help_text="The actor's email at the time, or 'system'.")
    action = models.CharField(max_length=64, db_index=True)
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    data = models.JSONField(default=dict, blank=True)
    client_address = models.GenericIPAddressField(null=True, blank=True)
    # Set in Python (not auto_now_add) so that the hash covers the exact value stored.
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # The chain (audit/chain.py): NULL/"" until sealed, moments after the writing transaction commits.
    sequence = models.BigIntegerField(null=True, blank=True, help_text="Position in its tenant's chain, from 1.")
    prev_hash = models.CharField(max_length=64, blank=True, help_text="SHA-256 of the previous event in the chain.")
    hash = models.CharField(max_length=64, blank=True, help_text="SHA-256 over this event's content and prev_hash.")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["tenant", "-created_at"])]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "sequence"], condition=Q(tenant__isnull=False),
                                    name="audit_event_tenant_sequence"),
            models.UniqueConstraint(fields=["sequence"], condition=Q(tenant__isnull=True),
                                    name="audit_event_system_sequence"),
        ]

    def __str__(self):
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_label} {self.action} {self.target_type}:{self.target_id}"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise RuntimeError("Audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise RuntimeError("Audit events are append-only")


class AuditChainHead(models.Model):
    """The last sealed event of one chain. Its row lock serializes sealing; it also shows a deleted tail."""

    key = models.CharField(max_length=32, primary_key=True, help_text="'tenant-<id>' or 'system'.")
    sequence = models.BigIntegerField(default=0)
    hash = models.CharField(max_length=64)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"{self.key} #{self.sequence}"
