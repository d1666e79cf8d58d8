"""The terminal relay: browser WebSocket ↔ session backend (docs/terminal-protocol.md).

Bytes stay in this process. Output is coalesced and bounded by an ack window; input goes straight
to the shell. The shell itself lives in a LiveSession (terminal/live.py), which outlives a dropped
socket for a grace period so the browser can reattach.
"""

import asyncio
import contextlib
import logging
import weakref
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.http.request import split_domain_port, validate_host

from clusterra import logcontext, metrics
from terminal import actions, processes, protocol
from terminal.backends.base import BackendError, ShellRequest
from terminal.backends.local_pty import AccessRefused, LocalPtyBackend
from terminal.backends.ssm import SsmBackend
from terminal.live import LiveSession
from terminal.models import TerminalSession

logger = logging.getLogger(__name__)
Reason = TerminalSession.EndReason
REFUSED = "refused"

BACKENDS = {"local": LocalPtyBackend, "ssm": SsmBackend}

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
    """One browser connection, attached to a LiveSession (terminal/live.py) that owns the shell.

    The consumer owns what belongs to the socket: the wire protocol, output coalescing and the ack
    window. When the socket drops the session is detached, not ended, and may be reattached.
    """

    # Not on the channel layer: Channels would otherwise make every consumer await a receive on it,
    # and a Redis blip would crash every open terminal. Revocation has its own listener in LiveSession.
    channel_layer_alias = "terminal-relay-has-no-channel-layer"

    # The relays running in this process (for tests, metrics and graceful shutdown).
    live: "weakref.WeakSet[TerminalConsumer]" = weakref.WeakSet()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        TerminalConsumer.live.add(self)
        self.live_session: LiveSession | None = None
        self._outbuf = bytearray()
        self._unacked = 0
        self._flush_now = False
        self._flush_handle: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()
        self._writer_task: asyncio.Task | None = None
        self._closing = False  # this socket is done (ended, refused, detached or taken over)
        self._high = settings.TERMINAL_HIGH_WATERMARK
        self._low = settings.TERMINAL_LOW_WATERMARK
        self._coalesce_delay = settings.TERMINAL_COALESCE_MS / 1000
        self._coalesce_bytes = settings.TERMINAL_COALESCE_BYTES
        self._max_frame = settings.TERMINAL_MAX_FRAME  # read per frame: a plain attribute, not the lazy settings

    @property
    def session(self) -> TerminalSession | None:
        return self.live_session.session if self.live_session is not None else None

    # --- ASGI entry: make sure every way out detaches or finishes the session ------------------
    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        except asyncio.CancelledError:  # daphne cancels every application when it shuts down
            if self.live_session is not None and self.live_session.attached is self:
                await self.live_session.end(Reason.SERVER_SHUTDOWN, "The server is shutting down.", close_code=protocol.CLOSE_GOING_AWAY)
            raise
        finally:
            self._detach()

    def _detach(self):
        self._closing = True
        if self._writer_task is not None:
            self._writer_task.cancel()
        if self.live_session is not None:
            self.live_session.detach(self)

    # --- connect --------------------------------------------------------------------------------
    async def connect(self):
        if not origin_allowed(self.scope):
            metrics.TERMINAL_WEBSOCKET_REFUSALS.labels(code="403").inc()
            await self.close()  # before accept: the handshake is refused with HTTP 403
            return
        await self.accept()
        user = self.scope.get("user")
        kwargs = self.scope["url_route"]["kwargs"]
        # Log lines of this connection (and of the session's own tasks, created from here) carry these.
        logcontext.bind(tenant=kwargs.get("tenant_slug"), user_id=getattr(user, "pk", None), worker=settings.WORKER_ID)
        if user is None or not user.is_authenticated or not user.is_active:
            await self._refuse(protocol.CLOSE_UNAUTHENTICATED, "Sign in to open a terminal.")
            return
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        try:
            cols, rows = protocol.check_size(int(query.get("cols", ["80"])[0]), int(query.get("rows", ["24"])[0]))
        except (ValueError, protocol.ProtocolError):
            await self._refuse(protocol.CLOSE_BAD_FRAME, "cols and rows must be whole numbers from 1 to 1000.")
            return
        if "attach" in query:
            await self._reattach(user, query["attach"][0], kwargs, cols, rows)
            return
        headers = dict(self.scope.get("headers", []))
        try:
            await processes.lease.ensure_running()  # the session row names this process as its owner
        except Exception:
            logger.exception("terminal: could not register this portal process")
            await self._refuse(protocol.CLOSE_BACKEND_ERROR, "The server cannot open terminals right now; try again shortly.")
            return
        try:
            session = await database_sync_to_async(actions.open_terminal_session)(
                user=user, tenant_slug=kwargs["tenant_slug"], cluster_slug=kwargs["cluster_slug"],
                working_directory=query.get("cwd", [None])[0],
                client_address=(self.scope.get("client") or [None])[0],
                user_agent=headers.get(b"user-agent", b"").decode("utf-8", "replace"), owner_id=processes.lease.id,
            )
        except actions.TerminalRefused as exc:
            code = protocol.CLOSE_NOT_FOUND if exc.not_found else protocol.CLOSE_FORBIDDEN
            await self._refuse(code, str(exc))
            return
        await self._start_backend(session, cols, rows)

    async def _start_backend(self, session: TerminalSession, cols: int, rows: int):
        cluster = session.cluster
        backend_class = BACKENDS.get(session.backend)
        if backend_class is None:
            message = f"The {session.backend!r} backend is not available on this server."
            await database_sync_to_async(actions.finish_terminal_session)(session, reason=Reason.BACKEND_ERROR, message=message)
            self._closing = True
            await self.send(bytes_data=protocol.encode_status(type="exit", reason=Reason.BACKEND_ERROR, message=message))
            await self.close(code=protocol.CLOSE_BACKEND_ERROR, reason=_close_reason(message))
            return
        id_token = None
        web_session = self.scope.get("session")
        if session.backend == "ssm" and web_session is not None:  # the IdP's token may stand in for the portal's
            id_token = await database_sync_to_async(lambda: web_session.get("oidc_id_token"))()
        logcontext.bind(session_id=str(session.pk))
        self.live_session = live = LiveSession(session, backend_class)
        request = ShellRequest(
            posix_username=session.posix_username, expected_uid=session.account.uid,
            home_directory=cluster.home_directory(session.posix_username),
            working_directory=session.working_directory or None, cols=cols, rows=rows,
            session_id=str(session.pk), account=session.account,
            id_token=id_token,
        )
        try:
            await live.start(request, self)
        except AccessRefused as exc:
            logger.warning("terminal session %s refused: %s", session.pk, exc)
            await live.end(Reason.BACKEND_ERROR, str(exc), close_code=protocol.CLOSE_FORBIDDEN)
            return
        except BackendError as exc:
            logger.warning("terminal session %s (%s) could not start: %s", session.pk, session.backend, exc)
            await live.end(Reason.BACKEND_ERROR, str(exc))
            return
        except Exception:
            logger.exception("terminal session %s: backend failed to start", session.pk)
            await live.end(Reason.BACKEND_ERROR, "The shell could not be started; the error is in the server log.")
            return
        await self.send(bytes_data=protocol.encode_status(**self._connected_status(live)))
        self._writer_task = asyncio.create_task(self._writer())  # output only after the connected status
        self._wake.set()
        notice = getattr(live.backend, "customer_message", "")
        if notice:
            await self.send_status(type="notice", message=notice)

    def _connected_status(self, live: LiveSession, **extra) -> dict:
        session, cluster = live.session, live.cluster
        return dict(
            type="connected", session_id=str(session.pk), posix_user=session.posix_username, cluster=cluster.slug,
            backend=session.backend, idle_timeout=cluster.idle_timeout, max_duration=cluster.max_session_duration,
            reattach_grace=settings.TERMINAL_REATTACH_GRACE, high_watermark=self._high, low_watermark=self._low,
            worker=settings.WORKER_ID, **extra,
        )

    async def _reattach(self, user, session_id: str, kwargs, cols: int, rows: int):
        live = LiveSession.find(session_id, user.pk)
        if live is None or live.cluster.slug != kwargs["cluster_slug"] or live.cluster.tenant.slug != kwargs["tenant_slug"]:
            await self._refuse(protocol.CLOSE_NOT_FOUND, "That terminal session has ended.")
            return
        logcontext.bind(session_id=session_id)
        self.live_session = live
        scrollback = await live.attach(self, client_address=(self.scope.get("client") or [None])[0])
        if live.ending:  # it ended while we were attaching: end() tells us only if it saw us attached
            await live.ended.wait()
            if not self._closing:
                await self._refuse(protocol.CLOSE_NOT_FOUND, "That terminal session has ended.")
            return
        if self._closing:  # this socket went away meanwhile: the grace period starts now
            live.detach(self)
            return
        await self.send(bytes_data=protocol.encode_status(**self._connected_status(live, reattached=True)))
        self._outbuf[:0] = scrollback  # before anything the shell printed since attach()
        self._flush_now = True
        self._writer_task = asyncio.create_task(self._writer())
        self._wake.set()
        live.resize(cols, rows)
        live.resume_reading()

    async def _refuse(self, code: int, message: str):
        metrics.TERMINAL_WEBSOCKET_REFUSALS.labels(code=str(code)).inc()
        self._closing = True
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
        live = self.live_session
        if self._closing or live is None or live.ending or live.attached is not self:
            return
        try:
            if bytes_data is None:
                raise protocol.ProtocolError("Text frames are not part of the protocol.")
            opcode, value = protocol.decode_client_frame(bytes_data, self._max_frame)
            if opcode == protocol.INPUT:
                self._on_input(value)
            elif opcode == protocol.ACK:
                self._on_ack(value)
            elif opcode == protocol.RESIZE:
                live.resize(*value)
            else:  # TERMINATE: the user ended the session (New session, End session)
                await live.end(Reason.CLOSED, "Ended by the user.")
        except protocol.ProtocolError as exc:
            await live.end(Reason.CLOSED, f"Protocol error: {exc}", close_code=exc.code)

    def _on_input(self, data: bytes):
        self._flush_now = True  # the echo goes out without the coalescing delay
        if not self.live_session.write(data):
            asyncio.create_task(self.send_status(
                type="notice", message="The shell is not reading its input; some of what you typed or pasted was dropped."))

    def _on_ack(self, count: int):
        if count > self._unacked:
            raise protocol.ProtocolError(f"ACK of {count} bytes, but only {self._unacked} are unacknowledged.")
        self._unacked -= count
        if len(self._outbuf) + self._unacked <= self._low:
            self.live_session.resume_reading()

    # --- shell → browser (called by the LiveSession) --------------------------------------------
    @property
    def outstanding(self) -> int:
        """Output bytes this connection holds: buffered here plus sent and not yet acknowledged."""
        return len(self._outbuf) + self._unacked

    def read_budget(self) -> int:
        return self._high - self.outstanding

    def deliver(self, data: bytes):
        self._outbuf += data
        if self._flush_now or len(self._outbuf) >= self._coalesce_bytes or self._coalesce_delay == 0:
            self._flush_now = False
            self._wake.set()
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(self._coalesce_delay, self._wake.set)

    async def send_status(self, **fields):
        if not self._closing:
            await self.send(bytes_data=protocol.encode_status(**fields))

    async def _writer(self):
        """Sends coalesced output; the only task that emits OUTPUT frames."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._flush_handle is not None:
                self._flush_handle.cancel()
                self._flush_handle = None
            if self._outbuf:
                frame = protocol.OUTPUT_PREFIX + self._outbuf  # bytes, one copy
                self._outbuf.clear()
                self._unacked += len(frame) - 1
                await self.base_send({"type": "websocket.send", "bytes": frame})  # what self.send(bytes_data=) sends
            if self._closing:
                return

    async def _flush(self):
        if self._writer_task is not None and not self._writer_task.done():
            self._wake.set()  # send what is buffered, then stop
            try:
                await asyncio.wait_for(self._writer_task, timeout=2)
            except (asyncio.CancelledError, Exception):  # a timeout is an Exception too
                self._writer_task.cancel()

    async def session_ended(self, reason: str, message: str, exit_code: int | None, close_code: int | None):
        """The LiveSession ended: flush, tell the browser why, close."""
        self._closing = True
        await self._flush()
        status = {"type": "exit", "reason": reason, "message": message}
        if exit_code is not None:
            status["exit_code"] = exit_code
        with contextlib.suppress(Exception):  # the socket may already be gone
            await self.send(bytes_data=protocol.encode_status(**status))
            await self.close(code=close_code or _CLOSE_CODES.get(reason, protocol.CLOSE_NORMAL), reason=_close_reason(message))

    async def taken_over(self):
        """Another connection of the same user reattached to this session."""
        self._closing = True
        message = "The session was opened in another window."
        with contextlib.suppress(Exception):  # the socket may already be gone
            await self.send(bytes_data=protocol.encode_status(type="detached", message=message))
            await self.close(code=protocol.CLOSE_TAKEN_OVER, reason=message)

    # --- the end --------------------------------------------------------------------------------
    async def disconnect(self, code):
        self._detach()
