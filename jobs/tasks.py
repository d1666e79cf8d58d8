"""Celery tasks for the job cache. Beat calls poll_due_clusters every tick (2 s by default)."""

import logging

import redis
from celery import shared_task
from django.conf import settings

from clusters.models import Cluster
from jobs.services import PollError, refresh_jobs, refresh_partitions

logger = logging.getLogger(__name__)


def _redis():
    return redis.Redis.from_url(settings.POLL_LOCK_REDIS_URL, socket_timeout=5, socket_connect_timeout=5)


def claim_poll(cluster: Cluster, client=None) -> bool:
    """True for exactly one caller per cluster per interval, across every worker.

    The key expires after the cluster's interval, so it is both the lock and the "due" marker: a
    slow poll never overlaps the next one, and no cluster is polled more often than configured.
    """
    client = client or _redis()
    return bool(client.set(f"clusterra:poll:{cluster.pk}", "1", nx=True, ex=cluster.poll_interval))


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
    try:
        result = refresh_jobs(cluster)
        refresh_partitions(cluster)
    except PollError as exc:
        logger.warning("poll of cluster %s failed: %s", cluster.slug, exc)
        return
    logger.info("polled %s: %d jobs in queue, %d left, squeue %.3f s", cluster.slug, result.jobs_in_queue,
                result.jobs_left_queue, result.squeue_seconds)
