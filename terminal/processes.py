"""The portal processes that hold live terminal sessions, and what happens when one of them dies.

Every process that serves terminals (a daphne worker) registers a PortalProcess row and runs one
loop (not one per session) that, every second:
- ends its own sessions that were revoked in the database (`revoke_requested_at`). The channel-layer
  message sent by `revoke_terminal_sessions` is only the fast path: a Redis blip delays a revocation
  by at most a second, it never loses it;
- forgets cached AWS credentials of subjects revoked since the last tick (CredentialRevocation rows),
  so that revocation reaches the credential cache of every process;
- renews its lease every LEASE_RENEW_SECONDS;
- every REAP_SECONDS, ends the processes whose lease ran out (SIGKILL, OOM, a lost host) and finishes
  their sessions with reason `worker_lost`, after killing what is left of their shells (local
  sessions on this host) or terminating them at AWS (SSM). The Celery beat task does the same, so
  a site whose daphne processes all died is cleaned up too.

A process that finds itself declared lost (its loop was stalled past its lease) ends its own
sessions too — the reaper has already killed their shells — and registers again under a new id.
"""

import asyncio
import logging
import os
import socket
import time
import uuid
from datetime import datetime, timedelta

from channels.db import database_sync_to_async
from django.conf import settings
from django.utils import timezone

from clusterra import metrics
from clusters import aws
from clusters.models import CredentialRevocation
from terminal import actions
from terminal.models import PortalProcess, TerminalSession

logger = logging.getLogger(__name__)
Reason = TerminalSession.EndReason

TICK_SECONDS = 1.0
LEASE_RENEW_SECONDS = 2.0
REAP_SECONDS = 2.0
# A local shell's session leader starts right after its row is written: a process with that pid
# which started long after is somebody else's (the pid was reused once our whole session was gone).
_LEADER_START_WINDOW = timedelta(seconds=60)


class ProcessLease:
    """This process's PortalProcess row and its once-a-second loop (one per process)."""

    def __init__(self):
        self.id = uuid.uuid4()
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._credentials_seen: datetime | None = None
        self._failing_since: float | None = None

    # --- registration ---------------------------------------------------------------------------
    def _row_defaults(self) -> dict:
        return {
            "worker": settings.WORKER_ID, "hostname": socket.gethostname()[:255], "pid": os.getpid(),
            "lease_until": timezone.now() + timedelta(seconds=settings.TERMINAL_WORKER_LEASE_SECONDS),
        }

    def register(self) -> None:
        """Create or refresh this process's row (sync; also after a test flushed the table)."""
        PortalProcess.objects.update_or_create(id=self.id, defaults=self._row_defaults())

    def renew(self) -> bool:
        """Extend the lease. False if this process was declared lost meanwhile (it then re-registers)."""
        until = timezone.now() + timedelta(seconds=settings.TERMINAL_WORKER_LEASE_SECONDS)
        if PortalProcess.objects.filter(id=self.id, ended_at__isnull=True).update(lease_until=until):
            return True
        if PortalProcess.objects.filter(id=self.id).exists():
            logger.error("portal process %s was declared lost (its lease ran out): its sessions were ended", self.id)
            self.id = uuid.uuid4()
            self.register()
            return False
        self.register()  # the row is gone (a flushed test database): nothing was declared
        return True

    def stopped(self) -> None:
        """This process is shutting down cleanly (its sessions are ended by now)."""
        PortalProcess.objects.filter(id=self.id, ended_at__isnull=True).update(
            ended_at=timezone.now(), end_reason=PortalProcess.EndReason.STOPPED,
        )

    # --- the loop -------------------------------------------------------------------------------
    async def ensure_running(self) -> None:
        """Register and start the loop in the running event loop, once (a new loop starts a new one)."""
        loop = asyncio.get_running_loop()
        if self._task is not None and self._loop is loop and not self._task.done():
            return
        await database_sync_to_async(self.register)()
        if self._task is not None and self._loop is loop and not self._task.done():  # started meanwhile
            return
        self._loop = loop
        self._task = loop.create_task(self._run(), name="clusterra-portal-process")

    async def _run(self) -> None:
        from terminal.live import LiveSession  # live imports this module

        last_renew = last_reap = 0.0
        while True:
            now = time.monotonic()
            renew, reap = now - last_renew >= LEASE_RENEW_SECONDS, now - last_reap >= REAP_SECONDS
            try:
                revoked, still_ours = await database_sync_to_async(self._tick)(renew=renew, reap=reap)
            except Exception:
                if self._failing_since is None:  # once per outage, not every second
                    self._failing_since = now
                    logger.exception("portal process %s: the lease/revocation check failed; retrying every second", self.id)
            else:
                if self._failing_since is not None:
                    logger.warning("portal process %s: lease/revocation checks work again after %.0f s", self.id,
                                   now - self._failing_since)
                    self._failing_since = None
                last_renew = now if renew else last_renew
                last_reap = now if reap else last_reap
                if not still_ours:
                    await LiveSession.end_all(Reason.WORKER_LOST, "This server stopped answering in time; the session was ended.")
                for session_id, message in revoked:
                    live = LiveSession.registry.get(session_id)
                    if live is not None:
                        live.end_soon(Reason.REVOKED, message or "This session was revoked.")
            await asyncio.sleep(TICK_SECONDS)

    def _tick(self, *, renew: bool, reap: bool) -> tuple[list[tuple[str, str]], bool]:
        still_ours = self.renew() if renew else True
        revoked = [
            (str(pk), message) for pk, message in TerminalSession.objects.filter(
                owner_id=self.id, ended_at__isnull=True, revoke_requested_at__isnull=False,
            ).values_list("pk", "revoke_message")
        ]
        self._forget_revoked_credentials()
        if reap:
            reap_lost_processes()
        return revoked, still_ours

    def _forget_revoked_credentials(self) -> None:
        # At start, only revocations younger than the longest STS session matter: older credentials expired.
        since = self._credentials_seen or timezone.now() - timedelta(seconds=settings.AWS_SESSION_DURATION)
        self._credentials_seen = since
        rows = CredentialRevocation.objects.filter(revoked_at__gt=since - timedelta(seconds=5))  # clock slack between writers
        for subject, revoked_at in rows.values_list("subject", "revoked_at"):
            aws.forget_credentials(subject)
            self._credentials_seen = max(self._credentials_seen, revoked_at)


lease = ProcessLease()


# --- sessions of lost processes --------------------------------------------------------------------
def reap_lost_processes() -> int:
    """End processes whose lease ran out and finish their sessions (`worker_lost`). Returns sessions finished.

    Safe from any number of processes at once: each process row and each session is claimed by one.
    """
    now = timezone.now()
    for process in PortalProcess.objects.filter(ended_at__isnull=True, lease_until__lt=now):
        claimed = PortalProcess.objects.filter(pk=process.pk, ended_at__isnull=True, lease_until__lt=now).update(
            ended_at=now, end_reason=PortalProcess.EndReason.LEASE_EXPIRED,
        )
        if claimed:
            metrics.PORTAL_PROCESSES_LOST.inc()
            logger.warning("portal %s stopped renewing its lease (last until %s): ending its sessions", process,
                           process.lease_until.isoformat())
    finished = 0
    orphans = TerminalSession.objects.filter(ended_at__isnull=True, owner__ended_at__isnull=False)
    for session in orphans.select_related("owner", "account", "cluster__tenant", "user"):
        finished += end_orphaned_session(
            session, reason=Reason.WORKER_LOST,
            message=f"The server process holding this session ({session.owner.worker} on {session.owner.hostname}) was lost.",
        )
    return finished


def end_orphaned_session(session: TerminalSession, *, reason: str, message: str) -> bool:
    """A session nobody holds any more: stop what is left of its shell, then finish its row."""
    try:
        if session.backend == "local":
            _kill_local_shell(session)
        elif session.backend == "ssm" and session.backend_session_id:
            _terminate_ssm_session(session)
    except Exception:
        logger.exception("terminal session %s: could not stop the orphaned shell", session.pk)
    finished = actions.finish_terminal_session(session, reason=reason, message=message)
    if finished:
        metrics.TERMINAL_SESSION_ENDS.labels(backend=session.backend, reason=reason).inc()
    return finished


def _kill_local_shell(session: TerminalSession) -> None:
    from terminal.backends.local_pty import kill_kernel_session, process_start_time

    if not session.backend_session_id.isdigit():
        return
    if session.owner is not None and session.owner.hostname != socket.gethostname()[:255]:
        logger.warning("terminal session %s: its shell ran on %s, not here; it cannot be killed from this host",
                       session.pk, session.owner.hostname)
        return
    sid = int(session.backend_session_id)
    leader_started = process_start_time(sid)
    if leader_started is not None and not (
        session.started_at - timedelta(seconds=5) <= leader_started <= session.started_at + _LEADER_START_WINDOW
    ):
        return  # pid reused: that is another process's session, ours is gone
    killed = kill_kernel_session(sid)
    if killed:
        logger.warning("terminal session %s: killed %d leftover process(es) of its shell", session.pk, killed)


def _terminate_ssm_session(session: TerminalSession) -> None:
    client = aws.account_client(session.account, "ssm")
    aws.call(client, "terminate_session", SessionId=session.backend_session_id)


def close_stale_sessions(message: str = "The server stopped while the session was open.") -> int:
    """At start-up: finish sessions of lost processes, and rows that name no process (from before leases).

    Never touches a session of a process whose lease is current.
    """
    count = reap_lost_processes()
    for session in TerminalSession.objects.filter(ended_at__isnull=True, owner__isnull=True).select_related(
        "cluster__tenant", "user", "account",
    ):
        count += end_orphaned_session(session, reason=Reason.SERVER_SHUTDOWN, message=message)
    return count
