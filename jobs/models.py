"""The job cache: what the last poll of each cluster's queue (and accounting) said.

Pages and the API read this table, never Slurm, so a big queue does not slow anyone's page.
"""

from django.conf import settings
from django.db import models

from accounts.tenancy import scoped_queryset


class Job(models.Model):
    cluster = models.ForeignKey("clusters.Cluster", on_delete=models.CASCADE, related_name="jobs")
    job_id = models.CharField(max_length=64, help_text="Slurm's id: 123, 123_4 for an array task, 123_[5-9] for pending tasks.")
    array_job_id = models.BigIntegerField(null=True, blank=True)
    array_task_id = models.CharField(max_length=64, blank=True)
    owner = models.ForeignKey("clusters.ClusterAccount", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs",
                              help_text="The portal account whose POSIX user owns the job, if any.")
    posix_user = models.CharField(max_length=64)
    slurm_account = models.CharField(max_length=64, blank=True)
    name = models.CharField(max_length=255, blank=True)
    partition = models.CharField(max_length=64, blank=True)
    state = models.CharField(max_length=32, db_index=True)
    reason = models.CharField(max_length=255, blank=True)
    submit_time = models.DateTimeField(null=True, blank=True)
    start_time = models.DateTimeField(null=True, blank=True)
    end_time = models.DateTimeField(null=True, blank=True)
    time_limit = models.PositiveIntegerField(null=True, blank=True, help_text="Seconds; empty for UNLIMITED.")
    nodes = models.PositiveIntegerField(null=True, blank=True)
    cpus = models.PositiveIntegerField(null=True, blank=True)
    memory_mb = models.PositiveBigIntegerField(null=True, blank=True)
    gres = models.CharField(max_length=255, blank=True)
    node_list = models.CharField(max_length=1024, blank=True)
    work_dir = models.CharField(max_length=4096, blank=True)
    stdout_path = models.CharField(max_length=4096, blank=True)
    stderr_path = models.CharField(max_length=4096, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    exit_signal = models.IntegerField(null=True, blank=True, help_text="The signal that ended the job (Slurm's ExitCode=code:signal), if any.")
    in_queue = models.BooleanField(default=True, help_text="Still listed by squeue at the last poll.")
    last_seen_at = models.DateTimeField(help_text="When a poll or a job action last wrote what Slurm said. A poll leaves rows "
                                        "that did not change alone: the time of the last poll is QueueSummary.polled_at.")
    poll_digest = models.CharField(max_length=16, blank=True, editable=False,
                                   help_text="Digest of the fields the last poll wrote; empty after anything else wrote the row.")

    objects = scoped_queryset("cluster__tenant").as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["cluster", "job_id"], name="job_id_unique_in_cluster")]
        # The lists' order (jobs.queries.NEWEST_FIRST: submit time descending with NULLs last, then id) has
        # indexes of its own, made per database by migration 0005: PostgreSQL needs `NULLS LAST` in the
        # index, which SQLite cannot declare (its DESC already puts NULLs last). With the id in the index,
        # the 10,000 tasks of one array, which share a submit time, need no sort.
        indexes = [
            models.Index(fields=["cluster", "in_queue"], name="job_in_queue"),
        ]

    def __str__(self):
        return f"{self.job_id} {self.name} ({self.state})"


class Partition(models.Model):
    """A Slurm partition and its node/CPU availability, as of the last poll."""

    cluster = models.ForeignKey("clusters.Cluster", on_delete=models.CASCADE, related_name="partitions")
    name = models.CharField(max_length=64)
    is_default = models.BooleanField(default=False)
    available = models.BooleanField(default=True)
    time_limit = models.PositiveIntegerField(null=True, blank=True, help_text="Seconds; empty for UNLIMITED.")
    nodes_allocated = models.PositiveIntegerField(default=0)
    nodes_idle = models.PositiveIntegerField(default=0)
    nodes_other = models.PositiveIntegerField(default=0)
    nodes_total = models.PositiveIntegerField(default=0)
    cpus_allocated = models.PositiveIntegerField(default=0)
    cpus_idle = models.PositiveIntegerField(default=0)
    cpus_other = models.PositiveIntegerField(default=0)
    cpus_total = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField()

    objects = scoped_queryset("cluster__tenant").as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["cluster", "name"], name="partition_name_unique_in_cluster")]
        ordering = ["-is_default", "name"]

    def __str__(self):
        return self.name


class QueueSummary(models.Model):
    """The last poll of a cluster's queue as a whole.

    Jobs of POSIX users who have no account on the cluster (another tenant's people on a shared Slurm)
    are not stored as Job rows; only how many there are per partition and state, here.
    """

    cluster = models.OneToOneField("clusters.Cluster", on_delete=models.CASCADE, related_name="queue_summary")
    polled_at = models.DateTimeField()
    jobs_in_queue = models.PositiveIntegerField(default=0, help_text="Jobs of the cluster's mapped users in squeue.")
    other_jobs = models.PositiveIntegerField(default=0, help_text="Jobs of everyone else in squeue (not in this tenant).")
    other_counts = models.JSONField(default=list, blank=True, help_text='[{"partition": …, "state": …, "jobs": n}, …]')

    objects = scoped_queryset("cluster__tenant").as_manager()

    def __str__(self):
        return f"{self.cluster} at {self.polled_at:%Y-%m-%d %H:%M:%S}"


class JobSubmission(models.Model):
    """What was asked when a job was submitted through the portal (web, API, CLI), kept for "Resubmit".

    The validated request, not what Slurm made of it: an empty time limit stays empty (the partition's
    default), and an inline script is kept as written (at most jobs.validation.MAX_INLINE_SCRIPT_BYTES).
    Environment values are not kept (they may hold secrets); only their names, to say so on resubmit.
    """

    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="submission")
    options = models.JSONField(default=dict, help_text="sbatch options as asked: name, partition, time_limit, nodes, …")
    working_directory = models.CharField(max_length=4096, blank=True, help_text="Empty: the script's directory (or home).")
    script_path = models.CharField(max_length=4096, blank=True)
    script = models.TextField(blank=True, help_text="The inline script, when there was no script path.")
    environment_names = models.JSONField(default=list, blank=True)
    submitted_at = models.DateTimeField(auto_now_add=True)

    objects = scoped_queryset("job__cluster__tenant").as_manager()

    def __str__(self):
        return f"submission of {self.job.job_id}"


class JobTemplate(models.Model):
    """A user's saved submission on one cluster: sbatch options and a script path or an inline script."""

    cluster = models.ForeignKey("clusters.Cluster", on_delete=models.CASCADE, related_name="job_templates")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="job_templates")
    name = models.CharField(max_length=100)
    options = models.JSONField(default=dict, help_text="sbatch options: name, partition, time_limit, nodes, …")
    working_directory = models.CharField(max_length=4096, blank=True)
    script_path = models.CharField(max_length=4096, blank=True)
    script = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = scoped_queryset("cluster__tenant").as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["cluster", "owner", "name"], name="job_template_name_unique")]
        ordering = ["name"]

    def __str__(self):
        return self.name
