"""Celery tasks: beat runs reconcile_all every CLUSTERRA_OKTA_SYNC_MINUTES; each enabled tenant gets its own run."""

import logging

from celery import shared_task

logger = logging.getLogger(__name__)


@shared_task(name="okta.tasks.reconcile_all", ignore_result=True)
def reconcile_all() -> int:
    """Queue a reconciliation of every tenant whose Okta connection is enabled."""
    from okta.models import OktaConnection
    queued = 0
    for connection_id in OktaConnection.objects.filter(enabled=True).values_list("pk", flat=True):
        reconcile_tenant.delay(connection_id)
        queued += 1
    return queued


@shared_task(name="okta.tasks.reconcile_tenant", ignore_result=True)
def reconcile_tenant(connection_id: int, dry_run: bool | None = None, trigger: str = "schedule", actor_id: int | None = None):
    """One tenant's run (skipped while another of its runs is going on). dry_run None: the connection's setting."""
    from accounts.models import User
    from okta.models import OktaConnection
    from okta.reconcile import run_reconciliation
    connection = OktaConnection.objects.select_related("tenant").filter(pk=connection_id).first()
    if connection is None:
        return None
    actor = User.objects.filter(pk=actor_id).first() if actor_id else None
    run = run_reconciliation(connection, dry_run=dry_run, trigger=trigger, actor=actor)
    return run.pk if run is not None else None
