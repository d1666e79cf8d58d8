"""Terminal sessions (one row per shell opened from the browser) and the portal processes that hold them."""

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.tenancy import scoped_queryset
from clusterra.durations import duration_words


class PortalProcess(models.Model):
    """A running portal process (a daphne worker) that holds live terminal sessions.

    It renews `lease_until` while it runs (terminal/processes.py). A process whose lease ran out died
    without ending its sessions (SIGKILL, OOM, a lost host): any surviving process, or the Celery beat
    task, ends it and finishes its sessions with reason `worker_lost`.
    """

    class EndReason(models.TextChoices):
        STOPPED = "stopped", "Stopped"
        LEASE_EXPIRED = "lease_expired", "Lease expired"

    id = models.UUIDField(primary_key=True, editable=False)
    worker = models.CharField(max_length=16, help_text="CLUSTERRA_WORKER_ID: the reattach route to this process.")
    hostname = models.CharField(max_length=255)
    pid = models.IntegerField()
    started_at = models.DateTimeField(auto_now_add=True)
    lease_until = models.DateTimeField(db_index=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=16, choices=EndReason.choices, blank=True)

    def __str__(self):
        return f"worker {self.worker} pid {self.pid} on {self.hostname}"


class TerminalSession(models.Model):
    class EndReason(models.TextChoices):
        CLOSED = "closed", "Closed"
        IDLE = "idle", "Idle timeout"
        MAX_DURATION = "max_duration", "Maximum duration reached"
        REVOKED = "revoked", "Revoked"
        BACKEND_ERROR = "backend_error", "Backend error"
        SERVER_SHUTDOWN = "server_shutdown", "Server shutdown"
        WORKER_LOST = "worker_lost", "Server process lost"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="terminal_sessions")
    cluster = models.ForeignKey("clusters.Cluster", on_delete=models.PROTECT, related_name="terminal_sessions")
    account = models.ForeignKey("clusters.ClusterAccount", on_delete=models.PROTECT, related_name="terminal_sessions")
    posix_username = models.CharField(max_length=32, help_text="The POSIX user the shell ran as.")
    backend = models.CharField(max_length=16)
    backend_session_id = models.CharField(max_length=128, blank=True, help_text="PID of the local session leader, or the SSM session id.")
    working_directory = models.CharField(max_length=4096, blank=True)
    client_address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    started_at = models.DateTimeField(auto_now_add=True, db_index=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=32, choices=EndReason.choices, blank=True)
    end_message = models.CharField(max_length=500, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    bytes_in = models.BigIntegerField(default=0, help_text="Bytes typed or pasted by the user.")
    bytes_out = models.BigIntegerField(default=0, help_text="Bytes of output sent to the browser.")
    recording_path = models.CharField(max_length=500, blank=True, help_text="Relative to the recordings storage.")
    owner = models.ForeignKey(PortalProcess, null=True, blank=True, on_delete=models.PROTECT, related_name="sessions",
                              help_text="The portal process that holds the shell.")
    # Durable revocation: set first, then the channel-layer message is sent as the fast path; the owner
    # checks these every second, so a lost message (a Redis blip) delays a revocation but never drops it.
    revoke_requested_at = models.DateTimeField(null=True, blank=True)
    revoke_message = models.CharField(max_length=500, blank=True)
    # The browser tab went away but the shell waits for a reattach until `reattach_until`
    # (TERMINAL_REATTACH_GRACE after `detached_at`); both are cleared when a browser attaches again.
    detached_at = models.DateTimeField(null=True, blank=True)
    reattach_until = models.DateTimeField(null=True, blank=True)

    objects = scoped_queryset("cluster__tenant").as_manager()

    class Meta:
        ordering = ["-started_at"]
        indexes = [
            models.Index(fields=["ended_at"], name="terminal_session_live"),
            models.Index(fields=["owner", "ended_at"], name="terminal_session_owner_live"),
        ]

    def __str__(self):
        return f"{self.posix_username}@{self.cluster_id} {self.started_at:%Y-%m-%d %H:%M}"

    @property
    def is_live(self) -> bool:
        return self.ended_at is None

    @property
    def is_detached(self) -> bool:
        """Live, but no browser is attached: its tab closed or its connection dropped."""
        return self.ended_at is None and self.detached_at is not None

    def reattach_seconds_left(self, now=None) -> int:
        """Whole seconds left to reattach a detached session (0 once the window has passed)."""
        if not self.is_detached or self.reattach_until is None:
            return 0
        return max(0, int((self.reattach_until - (now or timezone.now())).total_seconds()))

    @property
    def live_state(self) -> str:
        """How a session reads in lists while it has not ended: "live" while a browser is attached, else
        "detached, reattachable for 45 seconds" (computed now, so each page load counts down)."""
        if self.ended_at is not None:
            return ""
        if not self.is_detached:
            return "live"
        left = self.reattach_seconds_left()
        return f"detached, reattachable for {duration_words(left)}" if left else "detached, ending"


class SessionLog(models.Model):
    """One log of a terminal session and where it is: the portal's own recording, or the SSM agent's log in S3 or in
    CloudWatch Logs.

    The recorder writes into a local spool (CLUSTERRA_RECORDINGS_SPOOL_DIR); when the session ends the
    spooled file is handed to the recording store (filesystem or S3) by a Celery task, retried with backoff
    while the store is down (terminal/recordings.py). An SSM session's logs are fetched from the cluster's
    bucket or log group once the agent has written them. Each log is also indexed for search (audit/indexing.py).
    """

    class Kind(models.TextChoices):
        ASCIICAST = "asciicast", "Portal recording (asciicast)"
        SSM_S3 = "ssm_s3", "SSM agent log (S3)"
        SSM_CLOUDWATCH = "ssm_cloudwatch", "SSM agent log (CloudWatch Logs)"

    class State(models.TextChoices):
        RECORDING = "recording", "Being recorded"
        SPOOLED = "spooled", "In the local spool, not stored yet"
        STORED = "stored", "Stored"
        AWAITED = "awaited", "Awaited from the SSM agent"
        LATE = "late", "Late: not delivered by the SSM agent yet"
        MISSING = "missing", "Missing"
        REJECTED = "rejected", "Not fetched: over the size limit"
        EXPIRED = "expired", "Deleted after the retention period"

    class IndexState(models.TextChoices):
        PENDING = "pending", "Not indexed yet"
        INDEXED = "indexed", "Indexed"
        PARTIAL = "partial", "Indexed as far as it could be read"
        FAILED = "failed", "Indexing failed"
        SKIPPED = "skipped", "Nothing to index"

    session = models.ForeignKey(TerminalSession, on_delete=models.CASCADE, related_name="logs")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    path = models.CharField(max_length=500, help_text="Relative to the recording store (and to the spool).")
    source = models.CharField(max_length=1100, blank=True,
                              help_text="Where an SSM log comes from: s3://bucket/key, or a CloudWatch Logs log stream's ARN.")
    state = models.CharField(max_length=16, choices=State.choices)
    size = models.BigIntegerField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0, help_text="Failed tries to store (or fetch) it.")
    last_error = models.CharField(max_length=500, blank=True)
    retry_at = models.DateTimeField(null=True, blank=True, help_text="When storing (or fetching) it is due (again).")
    claimed_until = models.DateTimeField(null=True, blank=True, help_text="A worker is at it until then.")
    stored_at = models.DateTimeField(null=True, blank=True)
    index_state = models.CharField(max_length=16, choices=IndexState.choices, default=IndexState.PENDING)
    index_note = models.CharField(max_length=500, blank=True)
    index_attempts = models.PositiveIntegerField(default=0)
    index_retry_at = models.DateTimeField(null=True, blank=True)
    indexed_at = models.DateTimeField(null=True, blank=True)
    indexed_lines = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = scoped_queryset("session__cluster__tenant").as_manager()

    class Meta:
        ordering = ["session", "kind"]
        constraints = [models.UniqueConstraint(fields=["session", "kind"], name="one_log_per_session_and_kind")]
        indexes = [
            models.Index(fields=["state", "retry_at"], name="session_log_due"),
            models.Index(fields=["index_state", "index_retry_at"], name="session_log_index_due"),
        ]

    def __str__(self):
        return f"{self.kind} of {self.session_id}: {self.state}"
