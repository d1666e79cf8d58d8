"""Celery tasks of the clusters app: the quotas shown on the dashboard (clusters/quotas.py).

Beat runs collect_quotas_due every CLUSTERRA_QUOTA_INTERVAL seconds; it queues one collect_quota per
account, so a slow head node (SSM) or a failing account delays nobody else's.
"""

import logging

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from clusters import quotas
from clusters.models import AccountUsage, ClusterAccount
from jobs import pollstate

logger = logging.getLogger(__name__)
LOCK_KEY = "clusterra:quota-running:{}"


@shared_task(ignore_result=True)
def collect_quotas_due() -> int:
    queued = 0
    for account_id in quotas.due_accounts().values_list("pk", flat=True):
        collect_quota.delay(account_id)
        queued += 1
    return queued


@shared_task(ignore_result=True)
def collect_quota(account_id: int) -> None:
    account = quotas.due_accounts().filter(pk=account_id).first()
    if account is None:  # revoked or deleted since it was queued
        return
    # One collection per account at a time: four commands with their timeouts may outlast the interval.
    with pollstate.running_once(pollstate.client(), LOCK_KEY.format(account_id), 4 * settings.QUOTA_COMMAND_TIMEOUT + 30) as mine:
        if not mine:
            return
        try:
            quotas.collect(account)
        except Exception:  # a bug here must not look like a quota, nor stop the other accounts' tasks
            logger.exception("collecting the quotas of %s on %s failed", account.posix_username, account.cluster.slug)
            record_internal_error(account)


def record_internal_error(account: ClusterAccount) -> None:
    AccountUsage.objects.update_or_create(account=account, defaults={
        "attempted_at": timezone.now(), "error": "The portal failed to collect them; the details are in its log."})
