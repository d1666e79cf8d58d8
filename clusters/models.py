"""Clusters, their connection settings, and each user's POSIX account on them."""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

from accounts.models import Tenant, slug_validator
from accounts.tenancy import scoped_queryset

# POSIX portable user names as useradd accepts them by default; never a path, never an option.
posix_username_validator = RegexValidator(
    r"^[a-z_][a-z0-9_-]{0,31}$", "Use 1–32 characters: lowercase letters, digits, '_' and '-', not starting with a digit or '-'."
)


slurm_account_validator = RegexValidator(r"^[a-z0-9_][a-z0-9_.-]{0,63}$", "Use lowercase letters, digits, '_', '.' and '-'.")


def validate_home_template(value: str):
    if not value.startswith("/") or "{username}" not in value:
        raise ValidationError("An absolute path containing {username}, such as /home/{username}.")


class Cluster(models.Model):
    """A Slurm cluster's head node and how to reach it."""

    class Backend(models.TextChoices):
        LOCAL = "local", "Local PTY (this machine)"
        SSM = "ssm", "AWS SSM Session Manager"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="clusters")
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=50, validators=[slug_validator])
    backend = models.CharField(max_length=16, choices=Backend.choices, default=Backend.LOCAL)
    backend_settings = models.JSONField(default=dict, blank=True, help_text="Backend-specific settings (e.g. SSM instance and region).")
    idle_timeout = models.PositiveIntegerField(default=20 * 60, validators=[MinValueValidator(1)], help_text="Seconds without input before a terminal session ends.")
    max_session_duration = models.PositiveIntegerField(default=12 * 3600, validators=[MinValueValidator(1)], help_text="Seconds a terminal session may last at most.")
    home_template = models.CharField(max_length=200, default="/home/{username}", validators=[validate_home_template])
    shared_roots = models.JSONField(default=list, blank=True, help_text="Absolute directories besides the home directory where job scripts and working directories may be, e.g. [\"/fsx\"].")
    poll_posix_username = models.CharField(max_length=32, blank=True, validators=[posix_username_validator],
                                           help_text="Unprivileged POSIX user the job poller runs squeue as (never root). Empty: no polling.")
    poll_uid = models.PositiveIntegerField(null=True, blank=True)
    poll_interval = models.PositiveIntegerField(default=10, validators=[MinValueValidator(2)], help_text="Seconds between polls of the queue.")
    slurm_account = models.CharField(max_length=64, blank=True, validators=[slurm_account_validator],
                                     help_text="Slurm account new people are associated with (sacctmgr). Empty: no association is made.")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = scoped_queryset("tenant").as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "slug"], name="cluster_slug_unique_in_tenant")]
        ordering = ["tenant__name", "name"]

    def __str__(self):
        return self.name

    def home_directory(self, posix_username: str) -> str:
        return self.home_template.format(username=posix_username)

    @property
    def is_polled(self) -> bool:
        """The job poller (and the quota collection) run for this cluster: it has a poll user."""
        return bool(self.poll_posix_username and self.poll_uid is not None)


class ClusterAccount(models.Model):
    """A user's POSIX/Slurm identity on one cluster. Only `active` accounts may open sessions.

    `pending`: access is granted but the head node has not confirmed the account yet (onboarding is
    retried, accounts/lifecycle.py). `revoked` with `head_node_action` "lock": the account still has to
    be locked on the head node (retried too); nobody can use it from the portal meanwhile.
    """

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"
        REVOKED = "revoked", "Revoked"

    class Grant(models.TextChoices):
        ADMIN = "admin", "An administrator"
        RULE = "rule", "An access rule"

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="accounts")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="cluster_accounts")
    posix_username = models.CharField(max_length=32, validators=[posix_username_validator])
    uid = models.PositiveIntegerField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.ACTIVE)
    granted_by = models.CharField(max_length=8, choices=Grant.choices, default=Grant.ADMIN,
                                  help_text="Rule grants end when the person's groups no longer give this cluster.")
    class HeadNodeAction(models.TextChoices):
        NONE = "", "Nothing"
        CREATE = "create", "Create the POSIX account"
        UNLOCK = "unlock", "Unlock the POSIX account"
        LOCK = "lock", "Lock the POSIX account"

    # Head-node work still to do, retried with backoff (accounts/lifecycle.py).
    head_node_action = models.CharField(max_length=8, choices=HeadNodeAction.choices, default="", blank=True)
    head_node_error = models.TextField(blank=True)
    head_node_attempts = models.PositiveIntegerField(default=0)
    head_node_retry_at = models.DateTimeField(null=True, blank=True, db_index=True)
    head_node_done_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = scoped_queryset("cluster__tenant").as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["cluster", "user"], name="one_account_per_user_and_cluster")]

    def __str__(self):
        return f"{self.posix_username}@{self.cluster.slug}"


class PosixIdentity(models.Model):
    """A person's POSIX name and uid in a tenant, the same on every cluster of the tenant.

    Never deleted and never given to anyone else (the user link is cleared if the user is deleted),
    so a person who comes back gets the same uid and home, and nobody inherits someone else's files.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="posix_identities")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="posix_identities")
    username = models.CharField(max_length=32, validators=[posix_username_validator])
    uid = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    objects = scoped_queryset("tenant").as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "username"], name="posix_name_unique_in_tenant"),
            models.UniqueConstraint(fields=["tenant", "uid"], name="posix_uid_unique_in_tenant"),
            models.UniqueConstraint(fields=["tenant", "user"], condition=models.Q(user__isnull=False), name="one_posix_identity_per_user"),
        ]

    def __str__(self):
        return f"{self.username} ({self.uid}) in {self.tenant.slug}"


class CredentialRevocation(models.Model):
    """AWS credentials of `subject` obtained before `revoked_at` must not be used any more.

    Every portal process caches STS credentials in memory; each one reads new rows every second
    (terminal/processes.py) and forgets the subject's cached credentials, so revocation reaches all
    processes even when the channel layer is down.
    """

    subject = models.CharField(max_length=64, primary_key=True)
    revoked_at = models.DateTimeField(db_index=True)

    def __str__(self):
        return f"{self.subject} revoked {self.revoked_at:%Y-%m-%d %H:%M:%S}"


class AccountUsage(models.Model):
    """What one ClusterAccount may use and has used on its cluster, as last collected (clusters/quotas.py).

    Collected in the background by a Celery task as the account's own POSIX user (sacctmgr, sshare,
    quota, df through the cluster's executor); pages only read this row. A part that fails keeps its
    previous value, and `error` says what failed at the last attempt.
    """

    account = models.OneToOneField(ClusterAccount, on_delete=models.CASCADE, related_name="usage")
    # [{"cluster", "account", "partition", "limits": {name: value}, "fairshare": {...} | None}, ...]
    associations = models.JSONField(default=list, blank=True)
    # [{"path", "kind": "home"|"shared", "source": "quota"|"filesystem", "used", "limit", "soft_limit",
    #   "filesystem", "mounted_on", "error"}, ...] in bytes
    storage = models.JSONField(default=list, blank=True)
    collected_at = models.DateTimeField(null=True, blank=True, help_text="The last attempt at which something was collected.")
    attempted_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True, help_text="What failed at the last attempt; empty when everything worked.")

    objects = scoped_queryset("account__cluster__tenant").as_manager()

    def __str__(self):
        return f"usage of {self.account_id}"
