"""Celery tasks for accounts. Beat runs rotate_signing_key_if_due every 6 hours (settings, AWS block)."""

from celery import shared_task

from accounts.issuer import rotate_signing_key_if_due as _rotate_if_due


@shared_task(ignore_result=True)
def rotate_signing_key_if_due() -> str | None:
    key = _rotate_if_due()
    return key.kid if key else None


@shared_task(name="accounts.tasks.head_node_work", ignore_result=True)
def head_node_work(account_id: int) -> bool:
    """Create, unlock or lock one person's POSIX account on a head node (accounts/lifecycle.py)."""
    from accounts.lifecycle import run_head_node_work
    from clusters.models import ClusterAccount
    account = ClusterAccount.objects.select_related("cluster__tenant", "user").filter(pk=account_id).first()
    return True if account is None else run_head_node_work(account)


@shared_task(name="accounts.tasks.retry_head_node_work", ignore_result=True)
def retry_head_node_work() -> int:
    """Head-node work that failed before and is due again (backoff in accounts/lifecycle.py)."""
    from accounts.lifecycle import retry_head_node_work as retry
    return retry()
