"""Celery tasks for the job cache. Beat calls poll_due_clusters every tick (2 s by default)."""

import logging

from celery import shared_task

from clusterra import metrics
from clusters.models import Cluster
from jobs import pollstate, slurm
from jobs.services import POLL_TIMEOUT, PollError, refresh_jobs, refresh_partitions

logger = logging.getLogger(__name__)


def _redis():
    return pollstate.client()


def claim_poll(cluster: Cluster, client=None) -> bool:
    """True for exactly one caller per cluster per interval, across every worker.

    The key expires after the cluster's interval (after a failed poll: the back-off delay, see
    jobs.pollstate), so it is both the lock and the "due" marker: a
    slow poll never overlaps the next one, and no cluster is polled more often than configured.
    """
    client = client or _redis()
    return bool(client.set(pollstate.DUE_KEY.format(cluster.pk), "1", nx=True, ex=cluster.poll_interval))


@shared_task(ignore_result=True)
def poll_due_clusters() -> int:
    polled = 0
    client = _redis()
    for cluster in Cluster.objects.exclude(poll_posix_username="").filter(poll_uid__isnull=False):
        if claim_poll(cluster, client):
            poll_cluster.delay(cluster.pk)
            polled += 1
    return polled


@shared_task(ignore_result=True)
def poll_cluster(cluster_id: int) -> None:
    cluster = Cluster.objects.filter(pk=cluster_id).first()
    if cluster is None:
        return
    conn = _redis()
    # One poll of a cluster at a time: while slurmctld is down each Slurm command takes ~10 s, longer
    # than a short interval, and the polls beat queued meanwhile would pile up behind it.
    with pollstate.running_once(conn, f"clusterra:poll-running:{cluster.pk}", POLL_TIMEOUT + 30) as mine:
        if mine:
            _poll(cluster, conn)


def _poll(cluster: Cluster, conn) -> None:
    try:
        with metrics.timed_poll(cluster):
            result = refresh_jobs(cluster)
            refresh_partitions(cluster)
    except (PollError, slurm.SlurmUnavailable) as exc:
        pollstate.record_failure(cluster, str(exc), conn)  # backs off; logs the first failure of an outage only
        return
    pollstate.record_success(cluster, conn)  # logs the recovery after an outage
    metrics.JOBS_IN_QUEUE.labels(cluster=metrics.cluster_label(cluster)).set(result.jobs_in_queue)
    logger.info("polled %s: %d jobs in queue, %d left, squeue %.3f s", cluster.slug, result.jobs_in_queue,
                result.jobs_left_queue, result.squeue_seconds)
