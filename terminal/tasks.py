"""Celery tasks of the terminal app."""

from celery import shared_task

from terminal.processes import reap_lost_processes


@shared_task(name="terminal.tasks.reap_lost_portal_processes", ignore_result=True)
def reap_lost_portal_processes() -> int:
    """Finish the sessions of portal processes that died (every daphne does this too; this covers a site
    whose daphne processes are all down)."""
    return reap_lost_processes()


# --- recordings and session logs (terminal/recordings.py) ---------------------------------------------------
@shared_task(name="terminal.tasks.store_session_logs", ignore_result=True)
def store_session_logs(session_id: str) -> int:
    """Hand an ended session's spooled recording to the store and index it (queued when the session ends)."""
    from terminal import recordings
    return recordings.store_session_logs(session_id)


@shared_task(name="terminal.tasks.sweep_session_logs", ignore_result=True)
def sweep_session_logs() -> int:
    """Whatever is due: recordings still spooled (the store was down), awaited SSM logs, logs not indexed yet."""
    from terminal import recordings
    return recordings.sweep()


@shared_task(name="terminal.tasks.expire_recordings", ignore_result=True)
def expire_recordings() -> int:
    """Delete recordings and logs past their tenant's retention period (hourly)."""
    from terminal import recordings
    return recordings.expire_recordings()
