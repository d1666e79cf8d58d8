"""Client side of the AWS SSM Session Manager data channel (we play session-manager-plugin).

Spec: ../shared/reference/ssm-data-channel.md (§ numbers below refer to it); our notes: docs/ssm-data-channel.md.

One DataChannel per StartSession. It dials the StreamUrl, authenticates with the opening text frame,
runs the handshake if the agent asks for one, and then moves bytes: keystrokes and window sizes go
out as sequenced input_stream_data messages that are retransmitted until acked; agent output comes
back sequenced, is acked, reordered and de-duplicated, and reaches `on_output` exactly once and in
order. A dropped WebSocket is resumed through `resume()` (ResumeSession) with the sequence state kept.

Everything is bounded: unsent + unacked input (`max_pending_input`), the reorder buffer
(`reorder_capacity`), the outgoing frame queue (acks wait for it to drain), reconnect attempts and
resend attempts. The token is never logged and never put into an exception message.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from terminal.ssm import frames
from terminal.ssm.frames import ActionStatus, ActionType, FrameError, MessageType, PayloadType, ProcessedAction

log = logging.getLogger(__name__)

# A released plugin version: the agent gates features on it (separate stdout/stderr needs >= 1.2.312.0;
# a source build's "1.2.0.0" breaks port sessions, spec §7.13).
DEFAULT_CLIENT_VERSION = "1.2.650.0"
DEFAULT_CLOSED_REASON = "The session was closed by AWS."
KMS_NOT_CONFIGURED = (
    "The AWS account's Session Manager preferences require KMS encryption (key {key}), "
    "but KMS encryption is not configured for this cluster in the portal."
)

# Retransmission constants (spec §5; the plugin's src/config/config.go).
INITIAL_RTT = 0.1
INITIAL_RTO = 0.2
MAX_RTO = 1.0
CLOCK_GRANULARITY = 0.01

OUTBOX_HIGH_WATER = 256  # queued outgoing frames before the reader waits (acks are the only unbudgeted frames)
MAX_INCOMING_FRAME = 1 << 20  # agent payloads are <= 1 KiB; handshake JSON is small. 1 MiB leaves room.
KMS_DATA_KEY_BYTES = 64  # two AES-256 keys (spec §4 step 4)
NONCE_BYTES = 12
GCM_TAG_BYTES = 16


class DataChannelError(Exception):
    """The data channel could not be opened or failed; the message is fit for the user."""


class _NoFrameDumps(logging.LoggerAdapter):
    """websockets logs every frame at DEBUG, and our opening frame holds the token: never let it."""

    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


_WS_LOGGER = _NoFrameDumps(logging.getLogger("websockets.client"), {})


class _SessionCipher:
    """AES-256-GCM with the two halves of the KMS data key (spec §4 step 4).

    Bytes [0:32] decrypt what the agent sends, bytes [32:64] encrypt what we send; every payload is
    a 12-byte random nonce followed by ciphertext and tag.
    """

    def __init__(self, plaintext_key: bytes):
        if len(plaintext_key) != KMS_DATA_KEY_BYTES:
            raise DataChannelError(f"KMS returned a {len(plaintext_key)}-byte data key; Session Manager needs {KMS_DATA_KEY_BYTES}")
        self._decrypt = AESGCM(plaintext_key[:32])
        self._encrypt = AESGCM(plaintext_key[32:])

    def encrypt(self, data: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._encrypt.encrypt(nonce, data, None)

    def decrypt(self, data: bytes) -> bytes:
        if len(data) < NONCE_BYTES + GCM_TAG_BYTES:
            raise InvalidTag()
        return self._decrypt.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], None)


@dataclass
class _Unacked:
    frame: bytes
    size: int  # payload bytes, counted against max_pending_input
    last_sent: float  # monotonic; updated on every resend (the plugin forgets to, spec §5)
    attempts: int = 0


class DataChannel:
    """One Session Manager data channel.

    Callbacks run on the event loop and must not block: `on_output(data)` gets raw agent output in
    order, `on_closed(reason)` is called at most once when the channel ends after open() succeeded,
    with channel_closed's Output or our own reason. It is not called for close() or when open() raises.

    Optional keyword arguments beyond the agreed interface (defaults follow the plugin):
      connect_timeout       seconds for the TCP/TLS/WebSocket opening handshake (each dial)
      max_pending_input     bytes of input queued before ready + sent but unacked; send_input() refuses beyond
      reorder_capacity      out-of-order agent messages buffered (more are dropped unacked; the agent resends)
      resend_interval       how often the oldest unacked message is checked against the RTO (§5: 100 ms)
      max_resend_attempts   resends of one message (counted while not paused) before giving up (§5: 3000)
      max_reconnects        ResumeSession + dial attempts after a drop (§6: 5), with exponential backoff
      reconnect_delay       first backoff delay; doubled per attempt up to max_reconnect_delay
      kms_challenge_ack     also bind the data key to the agent's random challenge (agent >= 3.2.x,
                            "ChallengeAcknowledgement"); off by default like the official plugin
    """

    def __init__(
        self,
        stream_url: str,
        token_value: str,
        *,
        session_id: str,
        target: str,
        on_output: Callable[[bytes], None],
        on_closed: Callable[[str], None],
        resume: Callable[[], Awaitable[tuple[str, str]]] | None = None,
        generate_data_key: Callable[[str, dict], Awaitable[tuple[bytes, bytes]]] | None = None,
        handshake_timeout: float = 15.0,
        ping_interval: float | None = 30.0,
        client_version: str = DEFAULT_CLIENT_VERSION,
        connect_timeout: float = 10.0,
        max_pending_input: int = 1 << 20,
        reorder_capacity: int = 1024,
        resend_interval: float = 0.1,
        max_resend_attempts: int = 3000,
        max_reconnects: int = 5,
        reconnect_delay: float = 0.1,
        max_reconnect_delay: float = 5.0,
        kms_challenge_ack: bool = False,
    ):
        self.session_id = session_id
        self.target = target
        self._stream_url = stream_url
        self._token = token_value
        self._on_output = on_output
        self._on_closed = on_closed
        self._resume = resume
        self._generate_data_key = generate_data_key
        self._handshake_timeout = handshake_timeout
        self._ping_interval = ping_interval
        self._client_version = client_version
        self._connect_timeout = connect_timeout
        self._max_pending_input = max_pending_input
        self._reorder_capacity = reorder_capacity
        self._resend_interval = resend_interval
        self._max_resend_attempts = max_resend_attempts
        self._max_reconnects = max_reconnects
        self._reconnect_delay = reconnect_delay
        self._max_reconnect_delay = max_reconnect_delay
        self._kms_challenge_ack = kms_challenge_ack
        self._client_id = str(uuid.uuid4())  # one per client instance, kept across reconnects (§1)

        self.customer_message = ""  # HandshakeComplete's CustomerMessage
        self.session_type = ""  # from the handshake's SessionType action ("" without handshake)
        self.paused = False  # pause_publication seen and no start_publication / agent traffic since
        self.encrypted = False
        self.closed_by_service = False  # channel_closed received (else the channel failed on our side)
        self.closed_output = ""  # channel_closed's Output ("" after a plain shell exit)
        # Counters for tests and metrics.
        self.resends = 0
        self.reconnects = 0
        self.duplicates = 0

        self._ws: ClientConnection | None = None
        self._tasks: list[asyncio.Task] = []
        self._ready_future: asyncio.Future | None = None
        self._opening = False
        self._ready = False
        self._closed = False
        self._closer: asyncio.Task | None = None
        self._handshake_seen = False
        self._cipher: _SessionCipher | None = None

        # Outgoing sequence state (§5): one counter for every stream message, never reset.
        self._next_seq = 0
        self._unacked: collections.OrderedDict[int, _Unacked] = collections.OrderedDict()
        self._unacked_bytes = 0
        self._rtt = INITIAL_RTT
        self._rttvar = 0.0
        self._rto = INITIAL_RTO
        # Held back until the session is ready (§4 step 5: input before HandshakeComplete is dropped).
        self._pending_input = bytearray()
        self._pending_size: tuple[int, int] | None = None
        # Incoming sequence state.
        self._expected = 0
        self._reorder: dict[int, frames.ClientMessage] = {}
        # Frames waiting for the writer task.
        self._outbox: collections.deque[bytes] = collections.deque()
        self._outbox_ready = asyncio.Event()
        self._outbox_empty = asyncio.Event()
        self._outbox_empty.set()

    # --- public API ------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def ready(self) -> bool:
        return self._ready

    async def open(self) -> None:
        """Dial, authenticate, handshake. Returns once the shell is ready; raises DataChannelError."""
        if self._opening or self._ready or self._closed:
            raise DataChannelError("This data channel was already opened")
        self._opening = True
        self._ready_future = asyncio.get_running_loop().create_future()
        try:
            self._ws = await self._dial(self._stream_url, self._token)
            self._tasks = [
                asyncio.create_task(self._read_loop(), name=f"ssm-read-{self.session_id}"),
                asyncio.create_task(self._write_loop(), name=f"ssm-write-{self.session_id}"),
                asyncio.create_task(self._resend_loop(), name=f"ssm-resend-{self.session_id}"),
            ]
            try:
                async with asyncio.timeout(self._handshake_timeout):
                    await asyncio.shield(self._ready_future)
            except TimeoutError:
                if self._handshake_seen:
                    detail = "the SSM agent started a handshake that did not complete"
                else:
                    detail = "the SSM agent sent neither a handshake nor any output"
                raise DataChannelError(
                    f"The Session Manager handshake did not complete within {self._handshake_timeout:g} s: {detail}."
                ) from None
        except BaseException:
            await self.close()
            raise
        finally:
            self._opening = False
        log.info("SSM session %s ready (handshake: %s, encrypted: %s)", self.session_id, self._handshake_seen, self.encrypted)

    def send_input(self, data: bytes) -> bool:
        """Queue keystrokes. False (input dropped) if closed or `max_pending_input` would be exceeded."""
        if self._closed:
            return False
        if not data:
            return True
        if self._unacked_bytes + len(self._pending_input) + len(data) > self._max_pending_input:
            log.debug("SSM session %s: input dropped, %d bytes still unacknowledged", self.session_id, self._unacked_bytes)
            return False
        if not self._ready:
            self._pending_input += data
            return True
        self._send_keys(bytes(data))
        return True

    def resize(self, cols: int, rows: int) -> None:
        """Tell the agent the terminal size (PayloadType 3). Only the latest size is kept until ready."""
        if self._closed:
            return
        payload = frames.size_payload(cols, rows)  # validates the range
        if not self._ready:
            self._pending_size = (cols, rows)
            return
        self._send_stream(PayloadType.SIZE, payload)

    async def close(self) -> None:
        """Stop the tasks and close the socket. Idempotent. Does not call TerminateSession."""
        if not self._closed:
            self._closed = True
            self._fail_open("The data channel was closed.")
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        self._tasks = []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        ws, self._ws = self._ws, None
        if ws is not None:
            await _close_quietly(ws)
        if self._closer is not None:
            closer, self._closer = self._closer, None
            await asyncio.gather(closer, return_exceptions=True)
        self._clear_outbox()

    # --- connection --------------------------------------------------------------------------------

    async def _dial(self, url: str, token: str) -> ClientConnection:
        """Plain WebSocket (no auth header, no subprotocol, §1), then the opening text frame."""
        try:
            ws = await connect(
                url,
                open_timeout=self._connect_timeout,
                ping_interval=self._ping_interval,
                ping_timeout=None,  # whether MGS answers pings is unverified (§6): never fail on a missing pong
                close_timeout=2,
                max_size=MAX_INCOMING_FRAME,
                compression=None,  # the plugin does not negotiate permessage-deflate
                logger=_WS_LOGGER,
            )
        except InvalidStatus as exc:
            raise DataChannelError(f"Session Manager refused the data channel (HTTP {exc.response.status_code}).") from None
        except TimeoutError:
            raise DataChannelError(f"The Session Manager data channel did not open within {self._connect_timeout:g} s.") from None
        except OSError as exc:
            raise DataChannelError(f"Could not connect to the Session Manager data channel: {exc.strerror or exc}.") from None
        except Exception as exc:  # InvalidURI, InvalidHandshake, ...: name the kind, never the URL's query or a token
            raise DataChannelError(f"Could not open the Session Manager data channel ({type(exc).__name__}).") from None
        try:
            await ws.send(frames.opening_frame(token, client_id=self._client_id, client_version=self._client_version))
        except ConnectionClosed:
            await _close_quietly(ws)
            raise DataChannelError("Session Manager closed the data channel before it was authenticated.") from None
        return ws

    async def _read_loop(self) -> None:
        while not self._closed:
            ws = self._ws
            if ws is None:
                raise RuntimeError("the data channel's read loop runs only while a WebSocket is open")
            try:
                async for raw in ws:
                    await self._handle_frame(raw)
                    if self._closed:
                        return
            except ConnectionClosed:
                pass
            if self._closed:
                return
            code, reason = ws.close_code, ws.close_reason
            log.warning("SSM session %s: data channel dropped (close code %s %s)", self.session_id, code, reason or "")
            if not self._ready:
                self._finish(f"Session Manager closed the data channel before the session started (code {code}).")
                return
            await self._reconnect()

    async def _reconnect(self) -> None:
        """ResumeSession and reopen, keeping the sequence state (§1, §6 "P's reconnect", §7.8)."""
        old, self._ws = self._ws, None
        self._clear_outbox()  # acks for the old socket are moot; the agent resends what we do not ack
        if old is not None:
            await _close_quietly(old)
        if self._resume is None:
            self._finish("The connection to AWS Session Manager was lost.")
            return
        delay = self._reconnect_delay
        last_error = "no attempt made"
        for attempt in range(1, self._max_reconnects + 1):
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_reconnect_delay)
            try:
                url, token = await self._resume()
            except DataChannelError as exc:  # the resume callable says: final, do not retry
                self._finish(str(exc))
                return
            except Exception as exc:
                last_error = str(exc) or type(exc).__name__
                log.warning("SSM session %s: ResumeSession attempt %d failed: %s", self.session_id, attempt, last_error)
                continue
            if not token:  # the plugin's rule: an empty token means the session timed out
                self._finish("The session timed out and can no longer be resumed.")
                return
            if url:
                self._stream_url = url
            try:
                ws = await self._dial(self._stream_url, token)
            except DataChannelError as exc:
                last_error = str(exc)
                log.warning("SSM session %s: reconnect attempt %d failed: %s", self.session_id, attempt, last_error)
                continue
            if self._closed:
                await _close_quietly(ws)
                return
            self._ws = ws
            self.reconnects += 1
            # Resend everything unacked, oldest first; the agent re-acks what it already had (§7.7).
            now = time.monotonic()
            for entry in self._unacked.values():
                entry.last_sent = now
                self._enqueue(entry.frame)
            log.info("SSM session %s: data channel resumed (attempt %d, %d messages resent)", self.session_id, attempt, len(self._unacked))
            return
        self._finish(f"The connection to AWS Session Manager was lost and could not be resumed: {last_error}")

    async def _write_loop(self) -> None:
        """The only task that writes binary frames, so they leave in the order they were queued."""
        while True:
            await self._outbox_ready.wait()
            while self._outbox:
                ws = self._ws
                if ws is None:
                    self._clear_outbox()
                    break
                frame = self._outbox.popleft()
                try:
                    await ws.send(frame)
                except ConnectionClosed:
                    self._clear_outbox()  # the reader sees the drop and resumes; unacked input is resent then
                    break
            self._outbox_ready.clear()
            self._outbox_empty.set()

    def _enqueue(self, frame: bytes) -> None:
        if self._ws is None:
            return  # disconnected: sequenced messages stay in _unacked and are resent on reconnect
        self._outbox.append(frame)
        self._outbox_empty.clear()
        self._outbox_ready.set()

    def _clear_outbox(self) -> None:
        self._outbox.clear()
        self._outbox_empty.set()

    async def _flush(self, timeout: float = 1.0) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._outbox_empty.wait()
        except TimeoutError:
            pass

    # --- sending --------------------------------------------------------------------------------

    def _send_stream(self, payload_type: int, payload: bytes) -> None:
        seq = self._next_seq
        self._next_seq += 1
        message = frames.ClientMessage(MessageType.INPUT_STREAM_DATA, seq, payload, payload_type, flags=0)
        frame = frames.encode(message)
        self._unacked[seq] = _Unacked(frame, len(payload), time.monotonic())
        self._unacked_bytes += len(payload)
        self._enqueue(frame)

    def _send_keys(self, data: bytes) -> None:
        for start in range(0, len(data), frames.MAX_CHUNK):
            chunk = data[start : start + frames.MAX_CHUNK]
            # Only Output input is encrypted (§4 step 4).
            self._send_stream(PayloadType.OUTPUT, self._cipher.encrypt(chunk) if self._cipher else chunk)

    async def _send_ack(self, message: frames.ClientMessage) -> None:
        if len(self._outbox) >= OUTBOX_HIGH_WATER:
            await self._outbox_empty.wait()  # backpressure: stop reading until the socket takes our acks
        self._enqueue(frames.encode(frames.build_ack(message)))

    async def _resend_loop(self) -> None:
        """Resend the oldest unacked message once it is older than the RTO (§5), never while paused."""
        while True:
            await asyncio.sleep(self._resend_interval)
            # Not while paused (§6), disconnected, or while frames still wait for the socket.
            if self.paused or self._ws is None or not self._unacked or self._outbox:
                continue
            seq, entry = next(iter(self._unacked.items()))
            now = time.monotonic()
            if now - entry.last_sent <= self._rto:
                continue
            if entry.attempts >= self._max_resend_attempts:
                self._finish(
                    f"Session Manager stopped acknowledging input (message {seq} unacknowledged after "
                    f"{entry.attempts} resends); the session was ended."
                )
                return
            entry.attempts += 1
            entry.last_sent = now
            self.resends += 1
            log.debug("SSM session %s: resend seq %d (attempt %d, RTO %.0f ms)", self.session_id, seq, entry.attempts, self._rto * 1000)
            self._enqueue(entry.frame)

    def _become_ready(self) -> None:
        if self._ready:
            return
        self._ready = True
        # What the user did before ready, in the plugin's order: the size first, then keystrokes (§6).
        if self._pending_size is not None:
            self._send_stream(PayloadType.SIZE, frames.size_payload(*self._pending_size))
            self._pending_size = None
        if self._pending_input:
            pending, self._pending_input = bytes(self._pending_input), bytearray()
            self._send_keys(pending)
        if self._ready_future is not None and not self._ready_future.done():
            self._ready_future.set_result(None)

    # --- receiving ------------------------------------------------------------------------------

    async def _handle_frame(self, raw: bytes | str) -> None:
        if isinstance(raw, str):
            log.debug("SSM session %s: ignored a text frame", self.session_id)
            return
        try:
            message = frames.decode(raw)
        except FrameError as exc:
            # The plugin drops bad frames without an ack, so the sender retransmits (§2).
            log.warning("SSM session %s: dropped an invalid frame: %s", self.session_id, exc)
            return
        kind = message.message_type
        if kind == MessageType.OUTPUT_STREAM_DATA:
            self.paused = False  # agent traffic means the path is up again (the agent's own rule, §6)
            await self._on_stream_message(message)
        elif kind == MessageType.ACKNOWLEDGE:
            self.paused = False
            self._on_ack(message)
        elif kind == MessageType.CHANNEL_CLOSED:
            # Session Manager ended the session (shell exit, TerminateSession, its own timeouts): a
            # normal end with its reason, unlike the failures this channel reports itself.
            self.closed_by_service = True
            self.closed_output = frames.parse_channel_closed(message.payload)
            self._finish(self.closed_output or DEFAULT_CLOSED_REASON)
        elif kind == MessageType.PAUSE_PUBLICATION:
            self.paused = True  # advisory: never acked, never waited on (§6 flow control)
        elif kind == MessageType.START_PUBLICATION:
            self.paused = False
        else:
            log.debug("SSM session %s: ignored %s", self.session_id, kind)

    async def _on_stream_message(self, message: frames.ClientMessage) -> None:
        """In-order delivery with a bounded reorder buffer and re-acked duplicates (§5)."""
        seq = message.sequence_number
        if seq < self._expected:
            self.duplicates += 1
            await self._send_ack(message)  # the agent lost our ack; acking again stops its resends
            return
        if seq > self._expected:
            if seq in self._reorder or len(self._reorder) < self._reorder_capacity:
                self._reorder[seq] = message
                await self._send_ack(message)
            # else: dropped unacked; the agent retransmits it later
            return
        await self._send_ack(message)
        self._expected += 1
        await self._process(message)
        while not self._closed and self._expected in self._reorder:
            buffered = self._reorder.pop(self._expected)
            self._expected += 1
            await self._process(buffered)

    def _on_ack(self, message: frames.ClientMessage) -> None:
        try:
            ack = frames.parse_ack(message.payload)
        except FrameError as exc:
            log.warning("SSM session %s: ignored an acknowledge: %s", self.session_id, exc)
            return
        entry = self._unacked.pop(ack.sequence_number, None)  # receivers match on seq only (§5)
        if entry is None:
            return
        self._unacked_bytes -= entry.size
        self._update_rto(time.monotonic() - entry.last_sent)

    def _update_rto(self, sample: float) -> None:
        """Jacobson/Karels as the plugin does it: RTTVAR from the previous RTT, RTO capped at 1 s (§5)."""
        self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._rtt - sample)
        self._rtt = 0.875 * self._rtt + 0.125 * sample
        self._rto = min(MAX_RTO, self._rtt + max(CLOCK_GRANULARITY, 4 * self._rttvar))

    @property
    def rto(self) -> float:
        return self._rto

    async def _process(self, message: frames.ClientMessage) -> None:
        kind = message.payload_type
        if kind in (PayloadType.OUTPUT, PayloadType.STDERR, PayloadType.EXIT_CODE):
            data = message.payload
            if self._cipher is not None:
                try:
                    data = self._cipher.decrypt(data)
                except InvalidTag:
                    self._finish("Could not decrypt the session's output with the KMS data key; the session was ended.")
                    return
            if not self._ready and not self._handshake_seen:
                self._become_ready()  # no handshake: the first output means a shell session (§4 case a)
            if kind == PayloadType.EXIT_CODE:
                log.info("SSM session %s: exit code %r", self.session_id, data[:16])
            elif data:
                try:
                    self._on_output(data)
                except Exception:
                    log.exception("SSM session %s: on_output failed", self.session_id)
        elif kind == PayloadType.HANDSHAKE_REQUEST:
            await self._on_handshake_request(message.payload)
        elif kind == PayloadType.ENC_CHALLENGE_REQUEST:
            await self._on_challenge(message.payload)
        elif kind == PayloadType.HANDSHAKE_COMPLETE:
            try:
                self.customer_message = frames.parse_handshake_complete(message.payload)
            except FrameError as exc:
                log.warning("SSM session %s: HandshakeComplete: %s", self.session_id, exc)
            self._become_ready()
        else:
            log.debug("SSM session %s: ignored payload type %d", self.session_id, kind)

    # --- handshake (§4) ---------------------------------------------------------------------------

    async def _on_handshake_request(self, payload: bytes) -> None:
        if self._ready:
            log.warning("SSM session %s: ignored a HandshakeRequest after the session started", self.session_id)
            return
        self._handshake_seen = True
        try:
            request = frames.parse_handshake_request(payload)
        except FrameError as exc:
            self._finish(f"The SSM agent sent a malformed handshake request: {exc}")
            return
        processed: list[ProcessedAction] = []
        failure = ""
        for action in request.actions:
            if action.action_type == ActionType.SESSION_TYPE:
                session_type = action.parameters.get("SessionType")
                if session_type in frames.SHELL_SESSION_TYPES:
                    self.session_type = session_type
                    processed.append(ProcessedAction(action.action_type, ActionStatus.SUCCESS))
                else:
                    error = f"session type {session_type!r} is not a shell session"
                    failure = failure or f"The session document starts a {session_type!r} session, which is not a terminal."
                    processed.append(ProcessedAction(action.action_type, ActionStatus.FAILED, error=error))
            elif action.action_type == ActionType.KMS_ENCRYPTION:
                key_id = str(action.parameters.get("KMSKeyId") or "")
                entry, error = await self._kms_action(key_id, action.parameters)
                processed.append(entry)
                failure = failure or error
            else:
                processed.append(
                    ProcessedAction(action.action_type, ActionStatus.UNSUPPORTED, error=f"Unsupported action {action.action_type}")
                )
                failure = failure or f"The SSM agent asked for an unsupported handshake action ({action.action_type})."
        self._send_stream(PayloadType.HANDSHAKE_RESPONSE, frames.handshake_response_payload(self._client_version, processed))
        if failure:
            # The agent cancels the session on any non-Success entry (§4 step 2): say why right away.
            await self._flush()
            self._finish(failure)

    async def _kms_action(self, key_id: str, parameters: dict) -> tuple[ProcessedAction, str]:
        """GenerateDataKey for the agent's key; ActionResult carries the encrypted key (§4 step 4)."""
        if self._generate_data_key is None:
            message = KMS_NOT_CONFIGURED.format(key=key_id or "unknown")
            return ProcessedAction(ActionType.KMS_ENCRYPTION, ActionStatus.FAILED, error="KMS encryption is not configured on this client"), message
        context = {"aws:ssm:SessionId": self.session_id, "aws:ssm:TargetId": self.target}
        challenge = parameters.get("Challenge")
        acknowledge = self._kms_challenge_ack and isinstance(challenge, str) and bool(challenge)
        if acknowledge:
            context["aws:ssm:RandomChallenge"] = challenge
        try:
            plaintext, blob = await self._generate_data_key(key_id, dict(context))
            self._cipher = _SessionCipher(bytes(plaintext))
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
            log.warning("SSM session %s: KMS GenerateDataKey for %s failed: %s", self.session_id, key_id, reason)
            return (
                ProcessedAction(ActionType.KMS_ENCRYPTION, ActionStatus.FAILED, error=f"Failed to process action KMSEncryption: {reason}"),
                f"KMS encryption could not be set up for this session (key {key_id}): {reason}",
            )
        self.encrypted = True
        result: dict = {"KMSCipherTextKey": base64.b64encode(bytes(blob)).decode("ascii")}
        if acknowledge:
            result["ChallengeAcknowledgement"] = True
        return ProcessedAction(ActionType.KMS_ENCRYPTION, ActionStatus.SUCCESS, result=result), ""

    async def _on_challenge(self, payload: bytes) -> None:
        """Decrypt with our decrypt key, re-encrypt with our encrypt key, send it back (§4 step 4)."""
        if self._cipher is None:
            self._finish("The SSM agent sent an encryption challenge, but KMS encryption was not set up.")
            return
        try:
            plain = self._cipher.decrypt(frames.parse_challenge(payload))
        except (FrameError, InvalidTag):
            self._finish("The KMS encryption challenge from the SSM agent could not be decrypted; the session was ended.")
            return
        self._send_stream(PayloadType.ENC_CHALLENGE_RESPONSE, frames.challenge_payload(self._cipher.encrypt(plain)))

    # --- ending ---------------------------------------------------------------------------------

    def _fail_open(self, reason: str) -> None:
        if self._opening and self._ready_future is not None and not self._ready_future.done():
            self._ready_future.set_exception(DataChannelError(reason))
            self._ready_future.exception()  # open() re-raises it; keep asyncio from logging it as unretrieved

    def _finish(self, reason: str) -> None:
        """End the channel from inside (reader/resender). Reports once: to open() or to on_closed."""
        if self._closed:
            return
        self._closed = True
        log.info("SSM session %s: data channel ended: %s", self.session_id, reason)
        if self._ready:
            try:
                self._on_closed(reason)
            except Exception:
                log.exception("SSM session %s: on_closed failed", self.session_id)
        else:
            self._fail_open(reason)
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        ws, self._ws = self._ws, None
        if ws is not None:
            self._closer = asyncio.ensure_future(_close_quietly(ws))


async def _close_quietly(ws: ClientConnection) -> None:
    with contextlib.suppress(Exception):  # already gone
        await ws.close()
