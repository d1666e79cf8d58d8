"""Audit background work."""

from celery import shared_task

from audit import chain


@shared_task(ignore_result=True)
def seal_pending_events() -> int:
    """Seal events whose own post-commit seal never ran (the process died in between)."""
    return chain.seal_all()
