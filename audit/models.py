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
        indexes = [
            models.Index(fields=["tenant", "-created_at"]),
            models.Index(fields=["tenant", "-id"], name="audit_event_tenant_newest"),  # listings page by id
            models.Index(fields=["target_type", "target_id"], name="audit_event_target"),  # a session's events
        ]
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


class TranscriptSource(models.Model):
    """One indexed log of a terminal session (audit/indexing.py): its chunks' ids are `key` + 0..2**22-1.

    The key orders the logs by their session's start (newest first: audit/indexing.py); it is kept when the
    log is indexed again, so that its chunks keep their place.
    """

    session = models.ForeignKey("terminal.TerminalSession", on_delete=models.CASCADE, related_name="+")
    log_kind = models.CharField(max_length=16)
    key = models.BigIntegerField(unique=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["session", "log_kind"], name="audit_transcript_source_once")]

    def __str__(self):
        return f"{self.log_kind} of {self.session_id}"


class TranscriptChunk(models.Model):
    """Consecutive lines of what a session showed, as audit/transcript.py read them, for the search.

    Up to a few dozen lines a row (per-row costs would dominate with one line a row): their text joined
    with newlines, and for each line its time (`offsets`) and kind (`kinds`). What the search filters on is
    copied from the session. A full-text index covers `text`: SQLite FTS5 (trigram) kept by triggers, or
    PostgreSQL pg_trgm (audit/migrations). Derived data: deleted with its session, and by retention with
    its recording (indexing.delete_session_index).
    """

    id = models.BigIntegerField(primary_key=True, help_text="Its source's key + its place: see indexing.chunk_id.")
    session = models.ForeignKey("terminal.TerminalSession", on_delete=models.CASCADE, related_name="+")
    log_kind = models.CharField(max_length=16)
    tenant_id = models.BigIntegerField()
    user_id = models.BigIntegerField()
    cluster_id = models.BigIntegerField()
    session_started_at = models.DateTimeField()
    end_reason = models.CharField(max_length=32, blank=True)
    text = models.TextField()
    offsets = models.BinaryField(help_text="Each line's time: milliseconds from the start, uint32 little-endian; "
                                           "empty for a log without timing.")
    kinds = models.TextField(help_text="Each line's kind: o (output) or c (command).")

    class Meta:
        indexes = [
            models.Index(fields=["tenant_id", "id"], name="audit_chunk_tenant"),
            models.Index(fields=["tenant_id", "user_id", "id"], name="audit_chunk_tenant_user"),
        ]

    def __str__(self):
        return f"{self.log_kind} of {self.session_id}, chunk {self.id}"
