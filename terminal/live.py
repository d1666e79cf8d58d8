"""Live terminal sessions: the shell side of a session, independent of any browser socket.

A LiveSession owns the backend (local PTY or SSM data channel), the recording, the idle and
max-duration watchdog, revocation (its own channel-layer channel in the user's and the session's
groups) and a bounded scrollback of recent output. A TerminalConsumer *attaches* to it. When the
browser's socket drops, the session stays up for TERMINAL_REATTACH_GRACE seconds; a new socket
with `?attach=<session id>` from the same user takes it over and first receives the scrollback.

Live sessions are held in this process (`LiveSession.registry`): a reattach must reach the same
portal process, which the `/ws/w/<worker>/` route does behind nginx (docs/deployment.md). Each
session row names its process (terminal/processes.py), so a process that dies has its sessions
finished and its shells killed by the others.
"""

import asyncio
import contextlib
import logging
from typing import Protocol

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from clusterra import metrics
from clusterra.durations import duration_words
from terminal import actions, processes, protocol
from terminal.backends.base import SessionBackend
from terminal.models import TerminalSession
from terminal.recording import AsciicastRecorder

logger = logging.getLogger(__name__)
Reason = TerminalSession.EndReason


class Attachment(Protocol):
    """What a LiveSession needs from the browser connection attached to it (the consumer)."""

    def deliver(self, data: bytes) -> None: ...

    def read_budget(self) -> int: ...

    async def send_status(self, **fields) -> None: ...

    async def session_ended(self, reason: str, message: str, exit_code: int | None, close_code: int | None) -> None: ...

    async def taken_over(self) -> None: ...


def trim_scrollback(data: bytes) -> bytes:
    """Scrollback cut at an arbitrary byte may start inside an escape sequence or a UTF-8 character:
    start at the next line instead, when there is one nearby."""
    newline = data.find(b"\n", 0, 4096)
    return data[newline + 1 :] if newline >= 0 else data


class LiveSession:
    registry: "dict[str, LiveSession]" = {}

    def __init__(self, session: TerminalSession, backend_class: type[SessionBackend]):
        self.session = session
        self.cluster = session.cluster
        self.backend = backend_class(on_output=self._on_output, on_exit=self._on_exit, read_budget=self._read_budget)
        self.recorder: AsciicastRecorder | None = None
        self.attached: Attachment | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.ending = False
        self.ended = asyncio.Event()
        self._scrollback = bytearray()
        self._scrollback_limit = min(settings.TERMINAL_SCROLLBACK_BYTES, settings.TERMINAL_HIGH_WATERMARK)
        self._read_while_detached = 0
        self._channel_name: str | None = None
        self._groups: list[str] = []
        self._tasks: list[asyncio.Task] = []
        self._grace_task: asyncio.Task | None = None
        self._detach_recorded: asyncio.Task | None = None  # writing the detach time to the row
        self._end_task: asyncio.Task | None = None
        self._counted_live = False  # in the live-sessions gauge (the shell started)
        loop = asyncio.get_running_loop()
        self.started = self.last_input = loop.time()

    @property
    def key(self) -> str:
        return str(self.session.pk)

    @classmethod
    def find(cls, session_id: str, user_id) -> "LiveSession | None":
        live = cls.registry.get(session_id)
        if live is None or live.ending or live.session.user_id != user_id:
            return None
        return live

    # --- start ----------------------------------------------------------------------------------
    async def start(self, request, consumer: Attachment) -> None:
        """Start the shell with `consumer` attached. Raises the backend's errors (nothing is left running)."""
        self.attached = consumer
        self.registry[self.key] = self  # from here on end() takes it out again, also after a failed start
        await self.backend.start(request)
        # The recorder starts before the next await, with what the shell printed while it started (the
        # motd, the first prompt): output that arrives during an await would otherwise miss the recording.
        self.recorder = AsciicastRecorder(
            self.session.recording_path, cols=request.cols, rows=request.rows, shell=self.backend.shell,
            title=f"{self.session.posix_username}@{self.cluster.slug}",
        )
        if self._scrollback:
            self.recorder.output(bytes(self._scrollback))
        await database_sync_to_async(actions.attach_backend_session)(self.session, self.backend.session_id)
        loop = asyncio.get_running_loop()
        self.started = self.last_input = loop.time()
        self._counted_live = True
        metrics.TERMINAL_SESSIONS_LIVE.labels(backend=self.session.backend).inc()
        self._tasks.append(asyncio.create_task(self._watchdog()))
        await self._listen_for_revocation()

    async def _listen_for_revocation(self):
        """The fast path of revocation: a channel-layer message to the user's or the session's group.

        It runs beside the session and never ends it: when the channel layer fails (a Redis blip) it
        joins its groups again with backoff, and the durable check of terminal/processes.py still
        ends a revoked session within a second.
        """
        layer = get_channel_layer()
        groups = [actions.user_group(self.session.user_id), actions.session_group(self.session.pk)]

        async def listen():
            delay = 0.5
            while True:
                try:
                    if self._channel_name is None:
                        self._channel_name = await layer.new_channel()
                    for group in groups:
                        await layer.group_add(group, self._channel_name)
                    self._groups = groups
                    delay = 0.5
                    while True:
                        message = await layer.receive(self._channel_name)
                        if message.get("type") == "terminal.revoke":
                            self.end_soon(Reason.REVOKED, message.get("message") or "This session was revoked.")
                            return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    logger.warning("terminal session %s: channel layer unavailable (%s: %s); retrying in %.1f s",
                                   self.key, type(exc).__name__, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)

        self._tasks.append(asyncio.create_task(listen()))

    # --- attach / detach ------------------------------------------------------------------------
    async def attach(self, consumer: Attachment, *, client_address: str | None) -> bytes:
        """Hand the session to a new browser connection; returns the scrollback to replay.

        Output that arrives from here on goes to `consumer.deliver()`, and none of it is in the
        returned scrollback. Reading stays as it was: the consumer calls resume_reading() once it has
        sent the scrollback.
        """
        previous, self.attached = self.attached, None
        if self._grace_task is not None:
            self._grace_task.cancel()
            self._grace_task = None
        took_over = previous is not None and previous is not consumer
        if took_over:
            await previous.taken_over()
        if self._detach_recorded is not None:  # the detach is written first, so the reattach clears it after
            await self._detach_recorded
            self._detach_recorded = None
        await database_sync_to_async(actions.record_reattach)(self.session, client_address=client_address,
                                                             took_over=took_over)
        # No await from here on: the snapshot and the switch to `consumer` happen at the same point.
        scrollback = bytes(self._scrollback)
        self.attached = consumer
        return trim_scrollback(scrollback) if self.bytes_out > len(scrollback) else scrollback

    def detach(self, consumer: Attachment) -> None:
        """The browser connection went away: keep the shell for the grace period, then end it."""
        if self.attached is not consumer or self.ending:
            return
        self.attached = None
        self._read_while_detached = 0
        grace = settings.TERMINAL_REATTACH_GRACE
        if grace <= 0:
            self.end_soon(Reason.CLOSED, "The browser closed the connection.")
            return

        async def wait_for_reattach():
            await asyncio.sleep(grace)
            self.end_soon(Reason.CLOSED, f"The browser did not come back within {duration_words(grace)}.")

        async def record_detach():  # session lists show "detached, reattachable for …" from the row
            try:
                await database_sync_to_async(actions.record_detach)(self.session, grace=grace)
            except Exception:
                logger.exception("terminal session %s: recording the detach failed", self.key)

        self._grace_task = asyncio.create_task(wait_for_reattach())
        self._detach_recorded = asyncio.create_task(record_detach())

    # --- browser → shell ------------------------------------------------------------------------
    def write(self, data: bytes) -> bool:
        self.last_input = asyncio.get_running_loop().time()
        self.bytes_in += len(data)
        return self.backend.write(data)

    def resize(self, cols: int, rows: int) -> None:
        self.backend.resize(cols, rows)
        if self.recorder:
            self.recorder.resize(cols, rows)

    def resume_reading(self) -> None:
        self.backend.resume_reading()

    # --- shell → browser ------------------------------------------------------------------------
    def _read_budget(self) -> int:
        if self.attached is not None:
            return self.attached.read_budget()
        # Detached: keep reading until a scrollback's worth arrived, then let the shell block until
        # someone reattaches (bounded memory and no CPU spent on output nobody will see).
        return self._scrollback_limit - self._read_while_detached

    def _on_output(self, data: bytes) -> None:
        self.bytes_out += len(data)
        if self.recorder is not None:
            self.recorder.output(data)
        self._scrollback += data
        overflow = len(self._scrollback) - self._scrollback_limit
        if overflow > 0:
            del self._scrollback[:overflow]
        if self.attached is not None:
            self.attached.deliver(data)
        else:
            self._read_while_detached += len(data)

    def _on_exit(self, exit_code: int | None, error: str | None, *, message: str | None = None) -> None:
        if error:
            self.end_soon(Reason.BACKEND_ERROR, error, exit_code=exit_code)
        else:
            self.end_soon(Reason.CLOSED, message or f"The shell exited (code {exit_code}).", exit_code=exit_code)

    # --- timers ---------------------------------------------------------------------------------
    async def _warn(self, **fields):
        if self.attached is not None:
            with contextlib.suppress(Exception):  # the socket may be closing; the next attach gets the next warning
                await self.attached.send_status(**fields)

    async def _watchdog(self):
        cluster = self.cluster
        loop = asyncio.get_running_loop()
        max_deadline = self.started + cluster.max_session_duration
        max_warn_at = max_deadline - min(settings.TERMINAL_WARNING_SECONDS, cluster.max_session_duration / 2)
        idle_lead = min(settings.TERMINAL_WARNING_SECONDS, cluster.idle_timeout / 2)
        max_warned = False
        idle_warned_for = None  # the input time the idle warning was sent for
        while True:
            now = loop.time()
            idle_deadline = self.last_input + cluster.idle_timeout
            if now >= max_deadline:
                return self.end_soon(Reason.MAX_DURATION, "The session reached its maximum duration.")
            if now >= idle_deadline:
                return self.end_soon(Reason.IDLE, f"No input for {duration_words(cluster.idle_timeout)}.")
            if not max_warned and now >= max_warn_at:
                max_warned = True
                await self._warn(type="warning", reason="max_duration", seconds_left=round(max_deadline - now))
            if idle_warned_for != self.last_input and now >= idle_deadline - idle_lead:
                idle_warned_for = self.last_input
                await self._warn(type="warning", reason="idle", seconds_left=round(idle_deadline - now))
            wake_points = [max_deadline, idle_deadline]
            if not max_warned:
                wake_points.append(max_warn_at)
            if idle_warned_for != self.last_input:
                wake_points.append(idle_deadline - idle_lead)
            await asyncio.sleep(max(0.0, min(wake_points) - now))

    # --- the end --------------------------------------------------------------------------------
    def end_soon(self, reason: str, message: str, **kwargs) -> None:
        if not self.ending and self._end_task is None:
            self._end_task = asyncio.create_task(self.end(reason, message, **kwargs))

    async def end(self, reason: str, message: str, *, exit_code: int | None = None, close_code: int | None = None) -> None:
        """Finish the session exactly once: stop the shell, tell the browser, record, audit."""
        if self.ending:
            await self.ended.wait()
            return
        self.ending = True
        try:
            current = asyncio.current_task()
            for task in [*self._tasks, self._grace_task]:
                if task is not None and task is not current:
                    task.cancel()
            try:
                await self.backend.terminate()
            except Exception:
                logger.exception("terminal session %s: terminating the backend failed", self.key)
            # The shell is gone: the browser hears it first, the bookkeeping follows.
            attached, self.attached = self.attached, None
            if attached is not None:
                try:
                    await attached.session_ended(reason, message, exit_code, close_code)
                except Exception:
                    logger.exception("terminal session %s: telling the browser failed", self.key)
            if self.recorder is not None:
                self.recorder.close()
            if self._channel_name is not None:
                layer = get_channel_layer()
                for group in self._groups:
                    with contextlib.suppress(Exception):  # the layer is down: the group entry expires by itself
                        await layer.group_discard(group, self._channel_name)
            await database_sync_to_async(actions.finish_terminal_session)(
                self.session, reason=reason, message=message, exit_code=exit_code,
                bytes_in=self.bytes_in, bytes_out=self.bytes_out,
            )
        finally:
            self.registry.pop(self.key, None)
            self._count_end(reason)
            self.ended.set()

    def _count_end(self, reason: str) -> None:
        backend = self.session.backend
        if self._counted_live:
            metrics.TERMINAL_SESSIONS_LIVE.labels(backend=backend).dec()
        metrics.TERMINAL_SESSION_ENDS.labels(backend=backend, reason=reason).inc()
        metrics.TERMINAL_RELAY_BYTES.labels(direction="in").inc(self.bytes_in)  # once per session, not per keystroke
        metrics.TERMINAL_RELAY_BYTES.labels(direction="out").inc(self.bytes_out)

    @classmethod
    async def end_all(cls, reason: str = Reason.SERVER_SHUTDOWN, message: str = "The server is shutting down.") -> None:
        """End every live session of this process (server shutdown)."""
        sessions = list(cls.registry.values())
        if sessions:
            await asyncio.gather(*(live.end(reason, message, close_code=protocol.CLOSE_GOING_AWAY) for live in sessions),
                                 return_exceptions=True)


def hook_into_daphne() -> None:
    """Under daphne: hold a process lease from the start, and end every live session before exiting.

    The lease (terminal/processes.py) lets the other processes find this one's sessions if it dies.
    Daphne cancels the consumers of open sockets when it stops, which ends their sessions; a session
    waiting for its browser to come back has no consumer, so it needs this hook of its own.
    """
    import sys

    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None:  # not under daphne (tests, management commands)
        return
    from twisted.internet import defer

    async def start():
        try:
            await processes.lease.ensure_running()
        except Exception:  # the database is not there yet: the first terminal registers the process
            logger.exception("could not register this portal process")

    async def stop():
        await LiveSession.end_all()
        await database_sync_to_async(processes.lease.stopped)()

    reactor.callWhenRunning(lambda: asyncio.ensure_future(start()))
    reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.Deferred.fromFuture(asyncio.ensure_future(stop())))
