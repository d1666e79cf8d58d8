"""Test clients for the terminal WebSocket protocol: over channels' in-process communicator, and over a
real socket to a running daphne (WsTerminal, with a signed-in session cookie)."""

import asyncio
import contextlib
import json

from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore
from websockets.exceptions import ConnectionClosed

from terminal import protocol
from terminal.routing import websocket_urlpatterns

ORIGIN = b"http://127.0.0.1:8000"
HOST = b"127.0.0.1:8000"


class TerminalClient:
    def __init__(self, user, path: str, *, origin: bytes | None = ORIGIN, ack: bool = True):
        headers = [(b"host", HOST), (b"user-agent", b"pytest")]
        if origin is not None:
            headers.append((b"origin", origin))
        self.comm = WebsocketCommunicator(URLRouter(websocket_urlpatterns), path, headers=headers)
        self.comm.scope["user"] = user
        self.comm.scope["client"] = ["127.0.0.1", 50000]
        self.ack = ack
        self.output = bytearray()
        self.statuses: list[dict] = []
        self.close_code: int | None = None
        self.close_reason = ""

    async def connect(self):
        connected, _ = await self.comm.connect(timeout=10)
        return connected

    async def send_input(self, data: bytes):
        await self.comm.send_to(bytes_data=protocol.encode_input(data))

    async def send_raw(self, frame: bytes):
        await self.comm.send_to(bytes_data=frame)

    async def send_ack(self, count: int):
        await self.comm.send_to(bytes_data=protocol.encode_ack(count))

    async def _next(self, timeout: float):
        # Not comm.receive_output(): its timeout cancels the application, and quiet spells are normal here.
        if self.comm.future.done() and self.comm.output_queue.empty():
            self.comm.future.result()
            self.close_code = self.close_code or 1006
            return None
        message = await asyncio.wait_for(self.comm.output_queue.get(), timeout)
        if message["type"] == "websocket.close":
            self.close_code = message.get("code", 1000)
            self.close_reason = message.get("reason", "")
            return None
        frame = message["bytes"]
        if frame[0] == protocol.OUTPUT:
            self.output += frame[1:]
            if self.ack:
                await self.send_ack(len(frame) - 1)
        elif frame[0] == protocol.STATUS:
            self.statuses.append(json.loads(frame[1:]))
        return frame

    async def wait_for_status(self, kind: str, timeout: float = 10) -> dict:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for status in self.statuses:
                if status["type"] == kind:
                    return status
            if self.close_code is not None:
                raise AssertionError(f"socket closed ({self.close_code}) without a {kind!r} status: {self.statuses}")
            await self._next(max(0.01, deadline - loop.time()))

    async def wait_for_output(self, needle: bytes, timeout: float = 10) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while needle not in self.output:
            if self.close_code is not None:
                raise AssertionError(f"socket closed ({self.close_code}) before {needle!r}; output: {bytes(self.output[-500:])!r}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"{needle!r} not seen; output: {bytes(self.output[-500:])!r}")
            try:
                await self._next(remaining)
            except TimeoutError:
                raise AssertionError(f"{needle!r} not seen; output: {bytes(self.output[-500:])!r}") from None
        return bytes(self.output)

    async def wait_closed(self, timeout: float = 10) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.close_code is None:
            await self._next(max(0.01, deadline - loop.time()))
        return self.close_code

    async def drain(self, seconds: float):
        """Read whatever arrives during `seconds`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while self.close_code is None and loop.time() < deadline:
            try:
                await self._next(max(0.01, deadline - loop.time()))
            except TimeoutError:
                break

    async def close(self):
        await self.comm.disconnect(timeout=10)


def terminal_path(tenant="acme", cluster="hpc", **query) -> str:
    from urllib.parse import urlencode

    query = {"cols": 80, "rows": 24, **query}
    return f"/ws/t/{tenant}/c/{cluster}/terminal/?{urlencode(query)}"


async def settle_sessions(timeout: float = 5.0) -> None:
    """Before the test database is flushed: end live sessions and let finishing writes land.

    A test may return while a consumer is still finishing its session (the row and audit writes run
    in a worker thread, and pytest-asyncio cancels leftover tasks), which would race the flush.
    """
    from channels.db import database_sync_to_async

    from terminal.live import LiveSession
    from terminal.models import TerminalSession

    await LiveSession.end_all()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    open_rows = database_sync_to_async(lambda: TerminalSession.objects.filter(ended_at__isnull=True).exists())
    while await open_rows() and loop.time() < deadline:
        await asyncio.sleep(0.05)


def signed_in_cookie(user) -> str:
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "accounts.backends.PasswordBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return session.session_key


class WsTerminal:
    """The browser's side of docs/terminal-protocol.md, over a real socket."""

    def __init__(self, ws):
        self.ws = ws
        self.output = bytearray()
        self.statuses: list[dict] = []

    async def pump_until(self, done, timeout: float, what: str):
        deadline = asyncio.get_running_loop().time() + timeout
        while not done():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"{what} not seen within {timeout} s; statuses {self.statuses}, "
                                     f"output {bytes(self.output[-300:])!r}")
            frame = await asyncio.wait_for(self.ws.recv(), left)
            assert isinstance(frame, bytes), "the portal sent a text frame"
            if frame[0] == protocol.OUTPUT:
                self.output += frame[1:]
                # Once the server's close frame has arrived, sending raises although frames sent before it
                # (the exit status) are still to be read: acking is moot then, reading goes on.
                with contextlib.suppress(ConnectionClosed):
                    await self.ws.send(protocol.encode_ack(len(frame) - 1))
            elif frame[0] == protocol.STATUS:
                self.statuses.append(json.loads(frame[1:]))

    async def status(self, kind: str, timeout: float = 20) -> dict:
        await self.pump_until(lambda: any(s["type"] == kind for s in self.statuses), timeout, f"status {kind!r}")
        return next(s for s in self.statuses if s["type"] == kind)

    async def output_has(self, needle: bytes, timeout: float = 20) -> None:
        await self.pump_until(lambda: needle in self.output, timeout, repr(needle))

    async def run(self, command: bytes, expect: bytes, timeout: float = 20) -> None:
        """Type `command` and Enter, and wait for `expect` in the output."""
        await self.ws.send(protocol.encode_input(command + b"\r"))
        await self.output_has(expect, timeout=timeout)


@contextlib.asynccontextmanager
async def ws_terminal(server: str, cookie: str, path: str = "/ws/t/acme/c/hpc/terminal/?cols=80&rows=24"):
    """A terminal on a running daphne, signed in with `cookie`; yields a WsTerminal that saw `connected`."""
    from websockets.asyncio.client import connect

    url = server.replace("http://", "ws://") + path
    async with connect(url, origin=server, additional_headers={"Cookie": f"sessionid={cookie}"},
                       open_timeout=20, ping_interval=None, max_size=None) as ws:
        term = WsTerminal(ws)
        term.connected = await term.status("connected", timeout=30)
        term.session_id = term.connected["session_id"]
        yield term
