"""Celery tasks of the terminal app."""

from celery import shared_task

from terminal.processes import reap_lost_processes


@shared_task(name="terminal.tasks.reap_lost_portal_processes", ignore_result=True)
def reap_lost_portal_processes() -> int:
    """Finish the sessions of portal processes that died (every daphne does this too; this covers a site
    whose daphne processes are all down)."""
    return reap_lost_processes()
