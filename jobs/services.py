"""The job cache's write path: one squeue per cluster per poll, upsert of what changed, final states from sacct.

Only jobs of the cluster's mapped POSIX users (its ClusterAccount rows) are stored. On a Slurm that
several tenants share, everyone else's jobs are counted per partition and state (QueueSummary) and
never stored, so no page or API call can show or act on them.
"""

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass

from django.db import connection, transaction
from django.utils import timezone

from clusters.executors import ExecutorError, executor_for
from clusters.models import Cluster, ClusterAccount
from jobs import slurm
from jobs.models import Job, Partition, QueueSummary
from jobs.queries import ACTIVE_STATES, CANCELLABLE_STATES

logger = logging.getLogger(__name__)

POLL_TIMEOUT = 60
# What a poll writes: squeue's fields, the owner, and the digest of both (poll_digest).
_UPDATE_FIELDS = [
    "array_job_id", "array_task_id", "owner", "posix_user", "slurm_account", "name", "partition", "state", "reason",
    "submit_time", "start_time", "end_time", "time_limit", "nodes", "cpus", "memory_mb", "node_list", "work_dir",
    "poll_digest", "in_queue", "last_seen_at",
]
_CHUNK = 500  # ids per `IN (...)`: well under SQLite's bound-parameter limit


class PollError(Exception):
    pass


@dataclass(frozen=True)
class PollAccount:
    """The unprivileged identity the poller runs squeue as (the executor takes any object like this)."""

    posix_username: str
    uid: int


@dataclass
class PollResult:
    jobs_in_queue: int  # the tenant's jobs (of mapped users) that squeue listed
    jobs_left_queue: int
    squeue_seconds: float
    jobs_written: int = 0  # rows inserted or changed by this poll; the others were left alone
    other_jobs: int = 0  # jobs of POSIX users not mapped on this cluster: counted, not stored


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
    slurm.check_reachable(cluster.name, result)
    if not result.ok:
        raise PollError(f"squeue failed: {result.error_text()}")
    records = slurm.squeue_records(result.stdout)
    owners: dict[str, ClusterAccount] = {}
    # Several portal users may share a POSIX user (demo without root): the active one first, then the oldest.
    for account in sorted(ClusterAccount.objects.filter(cluster=cluster), key=lambda a: (a.state != ClusterAccount.State.ACTIVE, a.pk)):
        owners.setdefault(account.posix_username, account)
    # Rewriting every row on every poll cost ~1.7 s at 10k jobs. Each row keeps a digest of the squeue line
    # it was written from, so a line that did not change is neither parsed nor written.
    cached = {job_id: (pk, digest) for pk, job_id, digest in
              Job.objects.filter(cluster=cluster, in_queue=True).values_list("pk", "job_id", "poll_digest")}
    now = timezone.now()
    adapt = connection.ops.adapt_datetimefield_value
    now_value = adapt(now)
    changed: list[tuple] = []
    seen: set[str] = set()
    others: Counter = Counter()
    for f in records:
        owner = owners.get(f[_USER])
        if owner is None:
            others[(f[_PARTITION], f[_STATE])] += 1
            continue
        job_id = f[_ID]
        seen.add(job_id)
        digest = _digest(f, owner.pk)
        known = cached.get(job_id)
        if known is None or known[1] != digest:
            changed.append(_row(cluster, slurm.queued_job(f), owner, digest, now_value, adapt))
    gone_pks = [pk for job_id, (pk, _digest) in cached.items() if job_id not in seen]
    gone: list[Job] = []
    with transaction.atomic():
        _upsert(changed)
        if any(row[_STATE_COLUMN] in CANCELLABLE_STATES for row in changed):
            # A job that had ended and runs again (requeued) must not keep its old exit code: squeue has none.
            Job.objects.filter(cluster=cluster, in_queue=True, state__in=CANCELLABLE_STATES,
                               exit_code__isnull=False).update(exit_code=None, exit_signal=None)
        for start in range(0, len(gone_pks), _CHUNK):
            chunk = gone_pks[start:start + _CHUNK]
            gone += Job.objects.filter(pk__in=chunk).select_related("owner")
            Job.objects.filter(pk__in=chunk).update(in_queue=False)
        _store_summary(cluster, now, len(seen), others)
    # Jobs that ended but are still listed (squeue shows them for MinJobAge, 5 min by default) get their exit
    # code now, not when they leave the queue: squeue has no exit code, sacct has.
    ended = list(Job.objects.filter(cluster=cluster, in_queue=True, exit_code__isnull=True)
                 .exclude(state__in=ACTIVE_STATES).select_related("owner").order_by("pk")[:_CHUNK])
    if gone or ended:
        finish_from_accounting(cluster, gone + ended)
    return PollResult(len(seen), len(gone), result.seconds, jobs_written=len(changed), other_jobs=sum(others.values()))


_ID, _USER, _PARTITION, _STATE, _TIME_USED = (slurm.SQUEUE_FIELDS.index(code) for code in ("%i", "%u", "%P", "%T", "%M"))
_DIGEST_VERSION = "1"  # bump when what a row is built from a line changes, so every row is written again


def _digest(f: list[str], owner_id: int) -> str:
    """Of the squeue line and the row's owner; without the time used (%M), which is not stored and
    changes every second a job runs."""
    text = "\x1f".join([_DIGEST_VERSION, str(owner_id), *f[:_TIME_USED], *f[_TIME_USED + 1:]])
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


# The fields a poll writes; on a new row also the ones only job actions and sacct fill in.
_INSERT_ONLY = {"gres": "", "stdout_path": "", "stderr_path": "", "exit_code": None, "exit_signal": None}
_COLUMNS = ["cluster", "job_id", *_UPDATE_FIELDS, *_INSERT_ONLY]
_STATE_COLUMN = _COLUMNS.index("state")


def _row(cluster: Cluster, q: slurm.QueuedJob, owner: ClusterAccount, digest: str, now, adapt) -> tuple:
    """The values of _COLUMNS for one job, cut to the columns' sizes, datetimes as the database takes them (`adapt`)."""
    values = dict(
        _INSERT_ONLY, cluster=cluster.pk, job_id=q.job_id, array_job_id=q.array_job_id, array_task_id=q.array_task_id,
        owner=owner.pk, posix_user=q.user, slurm_account=q.account, name=q.name[:255], partition=q.partition,
        state=q.state, reason=q.reason[:255], submit_time=adapt(q.submit_time), start_time=adapt(q.start_time),
        end_time=adapt(q.end_time), time_limit=q.time_limit, nodes=q.nodes, cpus=q.cpus, memory_mb=q.memory_mb,
        node_list=q.node_list[:1024], work_dir=q.work_dir[:4096], poll_digest=digest, in_queue=True, last_seen_at=now,
    )
    return tuple(values[name] for name in _COLUMNS)


def _upsert(rows: list[tuple]) -> None:
    """INSERT … ON CONFLICT (cluster, job_id) DO UPDATE, one statement that PostgreSQL and SQLite (3.24+)
    both take. Not bulk_create: preparing each value through the ORM was ~85 % of a 10k-row write."""
    if not rows:
        return
    qn = connection.ops.quote_name
    columns = [Job._meta.get_field(name).column for name in _COLUMNS]
    updates = ", ".join(f"{qn(Job._meta.get_field(name).column)} = excluded.{qn(Job._meta.get_field(name).column)}"
                        for name in _UPDATE_FIELDS)
    table, names = qn(Job._meta.db_table), ", ".join(qn(c) for c in columns)
    values, key = ", ".join(["%s"] * len(columns)), f"{qn('cluster_id')}, {qn('job_id')}"
    # Only quoted identifiers of our own model are interpolated; every value is a query parameter.
    sql = f"INSERT INTO {table} ({names}) VALUES ({values}) ON CONFLICT ({key}) DO UPDATE SET {updates}"  # noqa: S608
    with connection.cursor() as cursor:
        for start in range(0, len(rows), 2000):
            cursor.executemany(sql, rows[start:start + 2000])


def _store_summary(cluster: Cluster, now, tenant_jobs: int, others: Counter) -> None:
    counts = [{"partition": p, "state": st, "jobs": n} for (p, st), n in sorted(others.items())]
    QueueSummary.objects.update_or_create(cluster=cluster, defaults={
        "polled_at": now, "jobs_in_queue": tenant_jobs, "other_jobs": sum(others.values()), "other_counts": counts,
    })


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
            if record is None or record.state in ACTIVE_STATES:
                continue  # accounting lags behind the controller: keep the queue's last word until it catches up
            # An exit code already cached came from scontrol, slurmctld's own word while it held the job; sacct's
            # allocation line says 0:0 for a job cancelled while it ran, where scontrol said 0:15 (SIGTERM).
            known = job.exit_code is not None
            Job.objects.filter(pk=job.pk).update(
                state=record.state, start_time=record.start_time or job.start_time, end_time=record.end_time,
                exit_code=job.exit_code if known else record.exit_code,
                exit_signal=job.exit_signal if known else record.exit_signal,
                node_list=record.node_list[:1024] or job.node_list,
            )


def refresh_partitions(cluster: Cluster) -> int:
    """Partitions and their idle/allocated nodes and CPUs, from one `sinfo` as the poll user."""
    try:
        result = executor_for(cluster).run(poll_account(cluster), slurm.sinfo_argv(), env=slurm.SLURM_ENV, timeout=POLL_TIMEOUT)
    except ExecutorError as exc:
        raise PollError(str(exc)) from None
    slurm.check_reachable(cluster.name, result)
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
