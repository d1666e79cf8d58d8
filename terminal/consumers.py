"""The terminal relay: browser WebSocket ↔ session backend (docs/terminal-protocol.md).

Bytes stay in this process. Output is coalesced and bounded by an ack window; input goes straight
to the shell. The Channels layer only brings control messages (revocation).
"""

import asyncio
import logging
import weakref
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.http.request import split_domain_port, validate_host

from terminal import actions, protocol
from terminal.backends.base import BackendError, ShellRequest
from terminal.backends.local_pty import AccessRefused, LocalPtyBackend
from terminal.models import TerminalSession
from terminal.recording import AsciicastRecorder

logger = logging.getLogger(__name__)
Reason = TerminalSession.EndReason
REFUSED = "refused"

BACKENDS = {"local": LocalPtyBackend}

_CLOSE_CODES = {
    Reason.BACKEND_ERROR: protocol.CLOSE_BACKEND_ERROR,
    Reason.SERVER_SHUTDOWN: protocol.CLOSE_GOING_AWAY,
}


def _close_reason(message: str) -> str:
    """A WebSocket close reason holds at most 123 bytes of UTF-8."""
    return message.encode()[:120].decode("utf-8", "ignore")


def origin_allowed(scope) -> bool:
    """Same-origin (the Origin's host is the Host we were reached at, and an allowed host) or trusted."""
    headers = dict(scope.get("headers", []))
    origin = headers.get(b"origin", b"").decode("latin-1")
    host = headers.get(b"host", b"").decode("latin-1")
    if not origin or not host:
        return False
    if origin in settings.TRUSTED_ORIGINS:
        return True
    domain, _port = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return False
    return origin in (f"http://{host}", f"https://{host}")


class TerminalConsumer(AsyncWebsocketConsumer):
    # The relays running in this process (for tests, metrics and graceful shutdown).
    live: "weakref.WeakSet[TerminalConsumer]" = weakref.WeakSet()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        TerminalConsumer.live.add(self)
        self.session: TerminalSession | None = None
        self.backend = None
        self.recorder: AsciicastRecorder | None = None
        self._outbuf = bytearray()
        self._unacked = 0
        self._flush_now = False
        self._flush_handle: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()
        self._writer_task: asyncio.Task | None = None
        self._watchdog_task: asyncio.Task | None = None
        self._end_task: asyncio.Task | None = None
        self._ending = False
        self._groups: list[str] = []
        self._bytes_in = 0
        self._bytes_out = 0
        self._high = settings.TERMINAL_HIGH_WATERMARK
        self._low = settings.TERMINAL_LOW_WATERMARK
        self._coalesce_delay = settings.TERMINAL_COALESCE_MS / 1000
        self._coalesce_bytes = settings.TERMINAL_COALESCE_BYTES

    # --- ASGI entry: make sure every way out finishes the session -----------------------------
    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        except asyncio.CancelledError:  # daphne cancels every application when it shuts down
            await self._end(Reason.SERVER_SHUTDOWN, "The server is shutting down.", send_to_client=True)
            raise
        finally:
            if not self._ending:
                await self._end(Reason.CLOSED, "The connection ended.", send_to_client=False)

    # --- connect --------------------------------------------------------------------------------
    async def connect(self):
        if not origin_allowed(self.scope):
            await self.close()  # before accept: the handshake is refused with HTTP 403
            return
        await self.accept()
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_active:
            await self._refuse(protocol.CLOSE_UNAUTHENTICATED, "Sign in to open a terminal.")
            return
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        try:
            cols, rows = protocol.check_size(int(query.get("cols", ["80"])[0]), int(query.get("rows", ["24"])[0]))
        except (ValueError, protocol.ProtocolError):
            await self._refuse(protocol.CLOSE_BAD_FRAME, "cols and rows must be whole numbers from 1 to 1000.")
            return
        kwargs = self.scope["url_route"]["kwargs"]
        headers = dict(self.scope.get("headers", []))
        try:
            self.session = await database_sync_to_async(actions.open_terminal_session)(
                user=user, tenant_slug=kwargs["tenant_slug"], cluster_slug=kwargs["cluster_slug"],
                working_directory=query.get("cwd", [None])[0],
                client_address=(self.scope.get("client") or [None])[0],
                user_agent=headers.get(b"user-agent", b"").decode("utf-8", "replace"),
            )
        except actions.TerminalRefused as exc:
            code = protocol.CLOSE_NOT_FOUND if exc.not_found else protocol.CLOSE_FORBIDDEN
            await self._refuse(code, str(exc))
            return
        await self._start_backend(cols, rows)

    async def _start_backend(self, cols: int, rows: int):
        session, cluster = self.session, self.session.cluster
        backend_class = BACKENDS.get(session.backend)
        if backend_class is None:
            await self._end(Reason.BACKEND_ERROR, f"The {session.backend!r} backend is not available on this server.")
            return
        self.backend = backend_class(on_output=self._on_output, on_exit=self._on_exit, read_budget=self._read_budget)
        request = ShellRequest(
            posix_username=session.posix_username, expected_uid=session.account.uid,
            home_directory=cluster.home_directory(session.posix_username),
            working_directory=session.working_directory or None, cols=cols, rows=rows,
        )
        try:
            await self.backend.start(request)
        except AccessRefused as exc:
            await self._end(Reason.BACKEND_ERROR, str(exc), close_code=protocol.CLOSE_FORBIDDEN)
            return
        except BackendError as exc:
            await self._end(Reason.BACKEND_ERROR, str(exc))
            return
        except Exception:
            logger.exception("terminal session %s: backend failed to start", session.pk)
            await self._end(Reason.BACKEND_ERROR, "The shell could not be started; the error is in the server log.")
            return
        await database_sync_to_async(actions.attach_backend_session)(session, self.backend.session_id)
        self.recorder = AsciicastRecorder(
            session.recording_path, cols=cols, rows=rows, shell=self.backend.shell,
            title=f"{session.posix_username}@{cluster.slug}",
        )
        loop = asyncio.get_running_loop()
        self._started = self._last_input = loop.time()
        self._writer_task = asyncio.create_task(self._writer())
        self._watchdog_task = asyncio.create_task(self._watchdog())
        for group in (actions.user_group(session.user_id), actions.session_group(session.pk)):
            await self.channel_layer.group_add(group, self.channel_name)
            self._groups.append(group)
        await self.send(bytes_data=protocol.encode_status(
            type="connected", session_id=str(session.pk), posix_user=session.posix_username, cluster=cluster.slug,
            idle_timeout=cluster.idle_timeout, max_duration=cluster.max_session_duration,
            high_watermark=self._high, low_watermark=self._low,
        ))

    async def _refuse(self, code: int, message: str):
        self._ending = True
        await self.send(bytes_data=protocol.encode_status(type="exit", reason=REFUSED, message=message))
        await self.close(code=code, reason=_close_reason(message))

    async def dispatch(self, message):
        # Channels' dispatch closes stale DB connections in a worker thread before *every* message:
        # a thread hop per keystroke and per ACK. Frames never touch the database (the ORM work at
        # connect/close goes through database_sync_to_async, which does that itself), so they skip it.
        if message["type"] == "websocket.receive":
            await self.websocket_receive(message)
        else:
            await super().dispatch(message)

    # --- browser → shell ------------------------------------------------------------------------
    async def receive(self, text_data=None, bytes_data=None):
        if self._ending or self.backend is None:
            return
        try:
            if bytes_data is None:
                raise protocol.ProtocolError("Text frames are not part of the protocol.")
            opcode, value = protocol.decode_client_frame(bytes_data, settings.TERMINAL_MAX_FRAME)
            if opcode == protocol.INPUT:
                self._on_input(value)
            elif opcode == protocol.ACK:
                self._on_ack(value)
            else:
                self.backend.resize(*value)
                if self.recorder:
                    self.recorder.resize(*value)
        except protocol.ProtocolError as exc:
            await self._end(Reason.CLOSED, f"Protocol error: {exc}", close_code=exc.code)

    def _on_input(self, data: bytes):
        self._last_input = asyncio.get_running_loop().time()
        self._bytes_in += len(data)
        self._flush_now = True  # the echo goes out without the coalescing delay
        if not self.backend.write(data):
            asyncio.create_task(self.send(bytes_data=protocol.encode_status(
                type="notice", message="The shell is not reading its input; some of what you typed or pasted was dropped.")))

    def _on_ack(self, count: int):
        if count > self._unacked:
            raise protocol.ProtocolError(f"ACK of {count} bytes, but only {self._unacked} are unacknowledged.")
        self._unacked -= count
        if len(self._outbuf) + self._unacked <= self._low:
            self.backend.resume_reading()

    # --- shell → browser ------------------------------------------------------------------------
    @property
    def outstanding(self) -> int:
        """Output bytes this session holds: buffered here plus sent and not yet acknowledged."""
        return len(self._outbuf) + self._unacked

    def _read_budget(self) -> int:
        return self._high - self.outstanding

    def _on_output(self, data: bytes):
        self._outbuf += data
        if self._flush_now or len(self._outbuf) >= self._coalesce_bytes or self._coalesce_delay == 0:
            self._flush_now = False
            self._wake.set()
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(self._coalesce_delay, self._wake.set)

    async def _writer(self):
        """Sends coalesced output; the only task that emits OUTPUT frames."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._flush_handle is not None:
                self._flush_handle.cancel()
                self._flush_handle = None
            if self._outbuf:
                chunk = bytes(self._outbuf)
                self._outbuf.clear()
                self._unacked += len(chunk)
                self._bytes_out += len(chunk)
                self.recorder.output(chunk)
                await self.send(bytes_data=protocol.OUTPUT_PREFIX + chunk)
            if self._ending:
                return

    def _on_exit(self, exit_code: int | None, error: str | None):
        if error:
            self._end_soon(Reason.BACKEND_ERROR, error, exit_code=exit_code)
        else:
            self._end_soon(Reason.CLOSED, f"The shell exited (code {exit_code}).", exit_code=exit_code)

    # --- timers and control messages ------------------------------------------------------------
    async def _watchdog(self):
        cluster = self.session.cluster
        loop = asyncio.get_running_loop()
        max_deadline = self._started + cluster.max_session_duration
        max_warn_at = max_deadline - min(settings.TERMINAL_WARNING_SECONDS, cluster.max_session_duration / 2)
        idle_lead = min(settings.TERMINAL_WARNING_SECONDS, cluster.idle_timeout / 2)
        max_warned = False
        idle_warned_for = None  # the input time the idle warning was sent for
        while True:
            now = loop.time()
            idle_deadline = self._last_input + cluster.idle_timeout
            if now >= max_deadline:
                return self._end_soon(Reason.MAX_DURATION, "The session reached its maximum duration.")
            if now >= idle_deadline:
                return self._end_soon(Reason.IDLE, f"No input for {cluster.idle_timeout} s.")
            if not max_warned and now >= max_warn_at:
                max_warned = True
                await self.send(bytes_data=protocol.encode_status(type="warning", reason="max_duration", seconds_left=round(max_deadline - now)))
            if idle_warned_for != self._last_input and now >= idle_deadline - idle_lead:
                idle_warned_for = self._last_input
                await self.send(bytes_data=protocol.encode_status(type="warning", reason="idle", seconds_left=round(idle_deadline - now)))
            wake_points = [max_deadline, idle_deadline]
            if not max_warned:
                wake_points.append(max_warn_at)
            if idle_warned_for != self._last_input:
                wake_points.append(idle_deadline - idle_lead)
            await asyncio.sleep(max(0.0, min(wake_points) - now))

    async def terminal_revoke(self, event):
        await self._end(Reason.REVOKED, event.get("message") or "This session was revoked.")

    # --- the end --------------------------------------------------------------------------------
    async def disconnect(self, code):
        await self._end(Reason.CLOSED, "The browser closed the connection.", send_to_client=False)

    def _end_soon(self, reason, message, **kwargs):
        if not self._ending and self._end_task is None:
            self._end_task = asyncio.create_task(self._end(reason, message, **kwargs))

    async def _end(self, reason: str, message: str, *, exit_code: int | None = None, close_code: int | None = None,
                   send_to_client: bool = True):
        """Finish the session exactly once: stop the shell, flush, tell the browser, close, record."""
        if self._ending:
            return
        self._ending = True
        current = asyncio.current_task()
        if self._watchdog_task is not None and self._watchdog_task is not current:
            self._watchdog_task.cancel()
        if self.backend is not None:
            try:
                await self.backend.terminate()
            except Exception:
                logger.exception("terminal session %s: terminating the backend failed", getattr(self.session, "pk", None))
        if self._writer_task is not None:
            self._wake.set()  # send what is buffered, then stop
            try:
                await asyncio.wait_for(self._writer_task, timeout=2)
            except (asyncio.TimeoutError, asyncio.CancelledError, Exception):
                self._writer_task.cancel()
        if self.recorder is not None:
            self.recorder.close()
        for group in self._groups:
            await self.channel_layer.group_discard(group, self.channel_name)
        if send_to_client:
            try:
                status = {"type": "exit", "reason": reason, "message": message}
                if exit_code is not None:
                    status["exit_code"] = exit_code
                await self.send(bytes_data=protocol.encode_status(**status))
                await self.close(code=close_code or _CLOSE_CODES.get(reason, protocol.CLOSE_NORMAL), reason=_close_reason(message))
            except Exception:  # the socket may already be gone
                pass
        if self.session is not None:
            await database_sync_to_async(actions.finish_terminal_session)(
                self.session, reason=reason, message=message, exit_code=exit_code,
                bytes_in=self._bytes_in, bytes_out=self._bytes_out,
            )
