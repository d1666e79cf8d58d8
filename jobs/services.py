"""The job cache's write path: one squeue per cluster per poll, bulk upsert, final states from sacct."""

import logging
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from clusters.executors import ExecutorError, executor_for
from clusters.models import Cluster, ClusterAccount
from jobs import slurm
from jobs.models import Job, Partition

logger = logging.getLogger(__name__)

POLL_TIMEOUT = 60
_UPDATE_FIELDS = [
    "array_job_id", "array_task_id", "owner", "posix_user", "slurm_account", "name", "partition", "state", "reason",
    "submit_time", "start_time", "end_time", "time_limit", "nodes", "cpus", "memory_mb", "node_list", "work_dir",
    "in_queue", "last_seen_at",
]


class PollError(Exception):
    pass


@dataclass(frozen=True)
class PollAccount:
    """The unprivileged identity the poller runs squeue as (the executor takes any object like this)."""

    posix_username: str
    uid: int


@dataclass
class PollResult:
    jobs_in_queue: int
    jobs_left_queue: int
    squeue_seconds: float


def poll_account(cluster: Cluster) -> PollAccount:
    if not cluster.poll_posix_username or cluster.poll_uid is None:
        raise PollError(f"Cluster {cluster.slug} has no poll user configured.")
    return PollAccount(cluster.poll_posix_username, cluster.poll_uid)


def refresh_jobs(cluster: Cluster) -> PollResult:
    """Poll the queue once and bring the cache up to date."""
    executor = executor_for(cluster)
    try:
        result = executor.run(poll_account(cluster), slurm.squeue_argv(), env=slurm.SLURM_ENV, timeout=POLL_TIMEOUT)
    except ExecutorError as exc:
        raise PollError(str(exc)) from None
    if not result.ok:
        raise PollError(f"squeue failed: {result.error_text()}")
    queued = slurm.parse_squeue(result.stdout)
    owners: dict[str, ClusterAccount] = {}
    # Several portal users may share a POSIX user (demo without root): the active one first, then the oldest.
    for account in sorted(ClusterAccount.objects.filter(cluster=cluster), key=lambda a: (a.state != ClusterAccount.State.ACTIVE, a.pk)):
        owners.setdefault(account.posix_username, account)
    now = timezone.now()
    rows = [
        Job(
            cluster=cluster, job_id=q.job_id, array_job_id=q.array_job_id, array_task_id=q.array_task_id,
            owner=owners.get(q.user), posix_user=q.user, slurm_account=q.account, name=q.name[:255],
            partition=q.partition, state=q.state, reason=q.reason[:255], submit_time=q.submit_time,
            start_time=q.start_time, end_time=q.end_time, time_limit=q.time_limit, nodes=q.nodes, cpus=q.cpus,
            memory_mb=q.memory_mb, node_list=q.node_list[:1024], work_dir=q.work_dir[:4096], in_queue=True,
            last_seen_at=now,
        )
        for q in queued
    ]
    seen = {row.job_id for row in rows}
    with transaction.atomic():
        Job.objects.bulk_create(rows, batch_size=2000, update_conflicts=True, unique_fields=["cluster", "job_id"],
                                update_fields=_UPDATE_FIELDS)
        gone = list(Job.objects.filter(cluster=cluster, in_queue=True).exclude(job_id__in=seen).select_related("owner"))
        if gone:
            Job.objects.filter(pk__in=[j.pk for j in gone]).update(in_queue=False)
    if gone:
        finish_from_accounting(cluster, gone)
    return PollResult(len(rows), len(gone), result.seconds)


def finish_from_accounting(cluster: Cluster, jobs: list[Job]) -> None:
    """Final state, times and exit code of jobs that left the queue, from sacct run as their owners.

    sacct shows users only their own jobs, so one call per owner; jobs with no portal owner keep
    their last queue state.
    """
    executor = executor_for(cluster)
    by_owner: dict[int, list[Job]] = {}
    for job in jobs:
        if job.owner is not None and job.owner.state == ClusterAccount.State.ACTIVE:
            by_owner.setdefault(job.owner_id, []).append(job)
    for owned in by_owner.values():
        ids = sorted({j.job_id.split("_", 1)[0] if "[" in j.job_id else j.job_id for j in owned})
        try:
            result = executor.run(owned[0].owner, slurm.sacct_argv(ids), env=slurm.SLURM_ENV, timeout=POLL_TIMEOUT)
        except ExecutorError as exc:
            logger.warning("sacct for %s on %s failed: %s", owned[0].owner.posix_username, cluster.slug, exc)
            continue
        if not result.ok:
            logger.warning("sacct on %s failed: %s", cluster.slug, result.error_text())
            continue
        final = {a.job_id: a for a in slurm.parse_sacct(result.stdout)}
        for job in owned:
            record = final.get(job.job_id)
            if record is None:
                continue
            Job.objects.filter(pk=job.pk).update(
                state=record.state, start_time=record.start_time or job.start_time, end_time=record.end_time,
                exit_code=record.exit_code, node_list=record.node_list[:1024] or job.node_list,
            )


def refresh_partitions(cluster: Cluster) -> int:
    """Partitions and their idle/allocated nodes and CPUs, from one `sinfo` as the poll user."""
    try:
        result = executor_for(cluster).run(poll_account(cluster), slurm.sinfo_argv(), env=slurm.SLURM_ENV, timeout=POLL_TIMEOUT)
    except ExecutorError as exc:
        raise PollError(str(exc)) from None
    if not result.ok:
        raise PollError(f"sinfo failed: {result.error_text()}")
    now = timezone.now()
    states = slurm.parse_sinfo(result.stdout)
    rows = [Partition(cluster=cluster, updated_at=now, **vars(p)) for p in states]
    fields = ([f for f in vars(states[0]) if f != "name"] + ["updated_at"]) if states else []
    with transaction.atomic():
        if rows:
            Partition.objects.bulk_create(rows, update_conflicts=True, unique_fields=["cluster", "name"], update_fields=fields)
        Partition.objects.filter(cluster=cluster).exclude(name__in=[p.name for p in states]).delete()
    return len(rows)
