"""A strict local stand-in for AWS Session Manager: the message gateway (MGS) and the SSM agent in one.

It is a `websockets` server on 127.0.0.1:0 that speaks the data-channel protocol of
../shared/reference/ssm-data-channel.md (§ numbers refer to it) and relays to a REAL pseudo-terminal:
each session spawns `argv` on a fresh PTY (under `setsid -c`, so the PTY is its controlling
terminal), writes Output input to it, applies Size with TIOCSWINSZ and sends what the PTY prints
as output_stream_data, retransmitting what the client does not acknowledge, as the agent does.

Strictness: every frame the client sends is checked (opening text frame with all five keys and the
current token; afterwards only binary frames that re-encode to the same bytes, which covers
HeaderLength 116, space padding, the swapped UUID halves, the raw digest and PayloadLength; client
sequence numbers contiguous from 0 across reconnects, a resend must repeat the original message;
well-formed acks naming a message we sent, with its id; no input before the session is ready). A
violation is appended to `emulator.violations` and the frame is dropped: tests assert that list
stays empty.

Knobs (constructor arguments, also plain attributes that a test may change while running):
  handshake            False (agent skips it, §4 case a) | True | "stuck" (never sends HandshakeComplete)
  kms_key_id           request KMSEncryption in the handshake; `kms_decrypt(blob, context) -> plaintext`
  withhold_first_size_ack  do not process/ack the first Size message (the agent's ErrHandlerNotReady, §5)
  reorder_output       number of times to swap two consecutive output messages
  duplicate_output     number of output messages to send twice
  channel_closed_after (seconds, output): send channel_closed that long after the session starts
  ignore_input         swallow client stream messages (never process or ack them)
  session_type         the SessionType the handshake asks for ("Standard_Stream")
  open_mode            "normal" | "refuse" (HTTP 403) | "stall" (never answers the upgrade) |
                       "silent" (accepts the opening frame, then says nothing)
  customer_message     HandshakeComplete's CustomerMessage
Actions (coroutines): pause(sid, seconds), close_channel(sid, output), drop(sid, forget_acks=0).
StartSession/ResumeSession stand-ins: start_session() -> (sid, url, token), resume_session(sid) ->
(url, token); every token opens one connection, so a reconnect needs a NEW token.

`run_in_thread(**knobs)` runs an emulator on its own event loop in a daemon thread (for sync users
such as bench/terminal.py).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import fcntl
import json
import logging
import os
import secrets
import signal
import struct
import termios
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from clusters.spawn import spawn_clean, wait_exit_code
from terminal.ssm import frames
from terminal.ssm.frames import ActionStatus, ActionType, FrameError, MessageType, PayloadType

DEFAULT_ARGV = ("/bin/bash", "--norc", "--noprofile", "-i")
DEFAULT_TARGET = "i-0123456789abcdef0"
AGENT_VERSION = "3.3.987.0"
HANDSHAKE_TIMEOUT_MESSAGE = "Handshake timed out. Please ensure that you have the latest version of the session manager plugin."
OUTPUT_RTO = 0.3  # the agent adapts its RTO; a fixed one keeps tests predictable
RESEND_TICK = 0.1
MAX_UNACKED_OUTPUT = 2048  # the agent keeps 100 000; we stop reading the PTY instead (bounded)
RECENT_WINDOW = 100_000  # client seqs / our message ids remembered for resend and ack checks
FLUSH_ON_EXIT = 2.0  # the agent waits at most 2 s for acks when the shell exits (§5)


class _NoFrameDumps(logging.LoggerAdapter):
    """websockets dumps frames at DEBUG; the opening frame holds the token, which must reach no log."""

    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


@dataclass
class Counters:
    connections: int = 0
    opening_frames: int = 0
    resumes: int = 0
    input_messages: int = 0  # distinct client stream messages received
    input_resends: int = 0  # client frames repeating a seq already received
    input_bytes: int = 0  # keystroke bytes written to PTYs
    acks_sent: int = 0
    acks_received: int = 0
    duplicate_acks: int = 0  # acks for output that was already acknowledged
    output_messages: int = 0
    output_resends: int = 0  # resent by the RTO timer or after a reconnect
    output_reordered: int = 0
    output_duplicated: int = 0
    size_withheld_seq: int | None = None
    size_resend_delay: float | None = None  # seconds between the withheld Size and its resend
    input_ignored: int = 0  # client stream frames swallowed by the ignore_input knob
    frames_while_paused: int = 0  # client stream frames that arrived while publication was paused
    resends_while_paused: int = 0
    handshake_responses: list = field(default_factory=list)  # [[ProcessedAction, ...], ...]
    handshakes_completed: int = 0
    challenges_verified: int = 0
    sizes: list = field(default_factory=list)  # (cols, rows) applied to the PTY


class _Session:
    def __init__(self, session_id: str, target: str, token: str, argv: tuple[str, ...], env: dict[str, str]):
        self.id = session_id
        self.target = target
        self.token = token
        self.argv = argv
        self.env = env
        self.client_id: str | None = None
        self.ws: ServerConnection | None = None
        self.started = False
        self.ended = False
        self.ready = False  # HandshakeComplete sent, or (no handshake) first output sent
        self.handshake = "none"  # none | requested | challenge | complete | failed
        self.requested_actions: list[frames.RequestedAction] = []
        self.kms_challenge_param = ""
        self.handshake_started = 0.0
        self.encrypt_key: AESGCM | None = None  # agent side: plaintext[:32] encrypts, [32:] decrypts
        self.decrypt_key: AESGCM | None = None
        self.challenge = b""
        # client -> agent
        self.max_seen = -1
        self.received: collections.OrderedDict[int, bytes] = collections.OrderedDict()  # seq -> fingerprint
        self.expected_in = 0
        self.in_buffer: dict[int, frames.ClientMessage] = {}
        self.size_withheld_at: float | None = None
        self.size_withheld_seq: int | None = None
        # agent -> client
        self.next_out = 0
        self.out_ids: collections.OrderedDict[int, uuid.UUID] = collections.OrderedDict()
        self.unacked_out: collections.OrderedDict[int, list] = collections.OrderedDict()  # seq -> [frame, last_sent]
        self.recent_acked: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=64)
        self.acked = asyncio.Event()
        self.held: bytes | None = None  # an output frame held back to reorder
        self.paused = False  # MGS paused publication: the agent leg is "down"
        # PTY
        self.master: int | None = None
        self.pid: int | None = None  # the shell's session leader
        self.carry = b""
        self.tasks: list[asyncio.Task] = []


class SsmEmulator:
    def __init__(
        self,
        argv: tuple[str, ...] | list[str] = DEFAULT_ARGV,
        *,
        env: dict[str, str] | None = None,
        target: str = DEFAULT_TARGET,
        handshake: bool | str = False,
        kms_key_id: str | None = None,
        kms_decrypt: Callable[[bytes, dict], bytes] | None = None,
        customer_message: str = "",
        withhold_first_size_ack: bool = False,
        reorder_output: int = 0,
        duplicate_output: int = 0,
        channel_closed_after: tuple[float, str] | None = None,
        open_mode: str = "normal",
        ignore_input: bool = False,
        session_type: str = "Standard_Stream",
        agent_handshake_timeout: float = 15.0,
        opening_timeout: float = 10.0,
    ):
        self.argv = tuple(argv)
        self.env = env if env is not None else _default_env()
        self.target = target
        self.handshake = handshake
        self.kms_key_id = kms_key_id
        self.kms_decrypt = kms_decrypt
        self.customer_message = customer_message
        self.withhold_first_size_ack = withhold_first_size_ack
        self.reorder_output = reorder_output
        self.duplicate_output = duplicate_output
        self.channel_closed_after = channel_closed_after
        self.open_mode = open_mode
        self.ignore_input = ignore_input
        self.session_type = session_type
        self.agent_handshake_timeout = agent_handshake_timeout
        self.opening_timeout = opening_timeout
        self.violations: list[str] = []
        self.issued_tokens: list[str] = []  # every token handed out, for "never logged" assertions
        self.counters = Counters()
        self.sessions: dict[str, _Session] = {}
        self.port = 0
        self._server = None
        self._stopping: asyncio.Event | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> SsmEmulator:
        self._stopping = asyncio.Event()
        self._server = await serve(
            self._handle_connection,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            open_timeout=None if self.open_mode == "stall" else 10,
            ping_interval=None,
            max_size=1 << 20,
            logger=_NoFrameDumps(logging.getLogger("websockets.server"), {}),
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        for session in list(self.sessions.values()):
            await self._end_session(session)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> SsmEmulator:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # --- the StartSession / ResumeSession stand-ins ---------------------------------------------

    def url_for(self, session_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/data-channel/{session_id}?role=publish_subscribe"

    def start_session(self, session_id: str | None = None, *, argv: list[str] | None = None, env: dict[str, str] | None = None) -> tuple[str, str, str]:
        """Register a session: returns (session_id, stream_url, token) like StartSession."""
        session_id = session_id or f"clusterra-{secrets.token_hex(8)}"
        token = _new_token()
        self.issued_tokens.append(token)
        self.sessions[session_id] = _Session(session_id, self.target, token, tuple(argv or self.argv), env or self.env)
        return session_id, self.url_for(session_id), token

    def resume_session(self, session_id: str) -> tuple[str, str]:
        """ResumeSession: a new token for the same stream; the old one is no longer accepted."""
        session = self.sessions[session_id]
        session.token = _new_token()
        self.issued_tokens.append(session.token)
        self.counters.resumes += 1
        return self.url_for(session_id), session.token


    def unacked_output(self, session_id: str) -> int:
        return len(self.sessions[session_id].unacked_out)

    # --- connection handling (MGS) --------------------------------------------------------------

    async def _process_request(self, connection: ServerConnection, request):
        if self.open_mode == "refuse":
            return connection.respond(HTTPStatus.FORBIDDEN, "Forbidden\n")
        if self.open_mode == "stall":
            assert self._stopping is not None
            await self._stopping.wait()
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "stopping\n")
        headers = request.headers
        if "Authorization" in headers:
            self._violation("the client sent an Authorization header (authentication is in the opening frame, §1)")
        if "Sec-WebSocket-Protocol" in headers:
            self._violation("the client asked for a subprotocol (§1: none)")
        return None

    async def _handle_connection(self, ws: ServerConnection) -> None:
        self.counters.connections += 1
        session = self._session_for_path(ws.request.path)
        if session is None:
            await ws.close(1008, "unknown session")
            return
        try:
            first = await asyncio.wait_for(ws.recv(), self.opening_timeout)
        except (TimeoutError, ConnectionClosed):
            self._violation(f"{session.id}: no opening frame within {self.opening_timeout} s")
            await ws.close(1008, "no opening frame")
            return
        if not self._check_opening(session, first):
            await ws.close(1008, "authentication failed")
            return
        if session.ended:
            await self._send(ws, _channel_closed_frame(session.id, "Session is terminated."))
            await ws.close()
            return
        if session.ws is not None:  # MGS keeps one client leg per session
            session.ws.transport.abort()
        session.ws = ws
        if self.open_mode == "silent":
            await ws.wait_closed()
            return
        if not session.started:
            session.started = True
            await self._start_agent(session)
        else:
            await self._resend_all(session)  # the agent's unacked output goes out again on the new leg
        try:
            async for raw in ws:
                await self._on_client_frame(session, raw)
        except ConnectionClosed:
            pass
        finally:
            if session.ws is ws:
                session.ws = None

    def _session_for_path(self, path: str) -> _Session | None:
        parts = urlsplit(path)
        prefix = "/v1/data-channel/"
        session_id = parts.path[len(prefix) :] if parts.path.startswith(prefix) else ""
        if parse_qs(parts.query).get("role") != ["publish_subscribe"]:
            self._violation(f"stream URL not used as given: {parts.path} without role=publish_subscribe")
        session = self.sessions.get(session_id)
        if session is None:
            self._violation(f"connection for unknown session {session_id!r}")
        return session

    def _check_opening(self, session: _Session, first: Any) -> bool:
        if not isinstance(first, str):
            self._violation(f"{session.id}: the first frame must be a TEXT frame with JSON (§1)")
            return False
        try:
            body = json.loads(first)
        except ValueError:
            self._violation(f"{session.id}: the opening frame is not JSON")
            return False
        if not isinstance(body, dict) or set(body) != set(frames.OPENING_KEYS):
            keys = sorted(body) if isinstance(body, dict) else type(body).__name__
            self._violation(f"{session.id}: the opening frame must have exactly the keys {frames.OPENING_KEYS}, got {keys}")
            return False
        if body["MessageSchemaVersion"] != "1.0":
            self._violation(f"{session.id}: MessageSchemaVersion must be '1.0'")
        for key in ("RequestId", "ClientId"):
            try:
                uuid.UUID(str(body[key]))
            except ValueError:
                self._violation(f"{session.id}: {key} is not a UUID")
        if not isinstance(body["ClientVersion"], str) or not body["ClientVersion"]:
            self._violation(f"{session.id}: ClientVersion must be a non-empty string")
        if session.client_id is not None and body["ClientId"] != session.client_id:
            self._violation(f"{session.id}: ClientId changed across reconnects")
        session.client_id = body["ClientId"]
        if not session.token or body["TokenValue"] != session.token:
            # Never put the token itself in a message: tests check tokens never reach logs.
            self._violation(f"{session.id}: opening frame with a wrong or already used token")
            return False
        session.token = ""  # one connection per token: reconnecting needs ResumeSession
        self.counters.opening_frames += 1
        return True

    # --- frames from the client -------------------------------------------------------------------

    async def _on_client_frame(self, session: _Session, raw: Any) -> None:
        if isinstance(raw, str):
            self._violation(f"{session.id}: text frame after the opening frame")
            return
        try:
            message = frames.decode(raw, strict=True)
        except FrameError as exc:
            self._violation(f"{session.id}: invalid frame: {exc}")
            return
        if frames.encode(message) != bytes(raw):
            self._violation(f"{session.id}: {message.message_type} seq {message.sequence_number} does not re-encode to the same bytes")
            return
        if message.message_type == MessageType.INPUT_STREAM_DATA:
            await self._on_input(session, message)
        elif message.message_type == MessageType.ACKNOWLEDGE:
            self._on_ack(session, message)
        else:
            self._violation(f"{session.id}: a client must not send {message.message_type}")

    async def _on_input(self, session: _Session, message: frames.ClientMessage) -> None:
        seq = message.sequence_number
        if message.flags != 0:
            self._violation(f"{session.id}: input seq {seq} has flags {message.flags}, expected 0")
        fingerprint = _fingerprint(message)
        if seq < 0 or seq > session.max_seen + 1:
            self._violation(f"{session.id}: input seq {seq} skips ahead (highest so far {session.max_seen}); numbers must be contiguous from 0")
            return
        if seq <= session.max_seen:
            self.counters.input_resends += 1
            if session.paused:
                self.counters.resends_while_paused += 1
            original = session.received.get(seq)
            if original is not None and original != fingerprint:
                self._violation(f"{session.id}: input seq {seq} was reused for a different message")
                return
            if seq == session.size_withheld_seq and session.size_withheld_at is not None and self.counters.size_resend_delay is None:
                self.counters.size_resend_delay = time.monotonic() - session.size_withheld_at
        else:
            session.max_seen = seq
            session.received[seq] = fingerprint
            while len(session.received) > RECENT_WINDOW:
                session.received.popitem(last=False)
            self.counters.input_messages += 1
        if session.paused:
            self.counters.frames_while_paused += 1
            return  # lost with the agent leg down: no ack, so the client must resend after start
        if self.ignore_input:
            self.counters.input_ignored += 1
            return  # a black hole: never acked
        if seq < session.expected_in:
            await self._ack(session, message)  # duplicate: re-ack, do not process (the agent, §5)
            return
        if seq > session.expected_in:
            session.in_buffer[seq] = message
            await self._ack(session, message)
            return
        if not await self._agent_process(session, message):
            return  # handler not ready: no ack, the client must retransmit
        await self._ack(session, message)
        session.expected_in += 1
        while session.expected_in in session.in_buffer:
            buffered = session.in_buffer.pop(session.expected_in)
            session.expected_in += 1
            await self._agent_process(session, buffered)

    def _on_ack(self, session: _Session, message: frames.ClientMessage) -> None:
        if message.sequence_number != 0 or message.flags != frames.ACK_FLAGS or message.payload_type != PayloadType.NONE:
            self._violation(f"{session.id}: ack header must be seq 0, flags 3, payload type 0")
        try:
            ack = frames.parse_ack(message.payload)
        except FrameError as exc:
            self._violation(f"{session.id}: {exc}")
            return
        if ack.message_type != MessageType.OUTPUT_STREAM_DATA or not ack.is_sequential:
            self._violation(f"{session.id}: ack must name output_stream_data and be sequential, got {ack}")
        seq = ack.sequence_number
        if not 0 <= seq < session.next_out:
            self._violation(f"{session.id}: ack for output seq {seq}, which was never sent")
            return
        sent_id = session.out_ids.get(seq)
        if sent_id is not None and ack.message_id != str(sent_id):
            self._violation(f"{session.id}: ack for seq {seq} names id {ack.message_id}, sent as {sent_id}")
        self.counters.acks_received += 1
        entry = session.unacked_out.pop(seq, None)
        if entry is None:
            self.counters.duplicate_acks += 1
        else:
            session.recent_acked.append((seq, entry[0]))
            session.acked.set()

    async def _ack(self, session: _Session, message: frames.ClientMessage) -> None:
        self.counters.acks_sent += 1
        await self._send(session.ws, frames.encode(frames.build_ack(message)))

    # --- the agent ----------------------------------------------------------------------------------

    async def _start_agent(self, session: _Session) -> None:
        if self.channel_closed_after is not None:
            delay, output = self.channel_closed_after
            session.tasks.append(asyncio.create_task(self._close_later(session, delay, output)))
        session.tasks.append(asyncio.create_task(self._resend_loop(session)))
        if self.handshake:
            session.handshake = "requested"
            session.handshake_started = time.monotonic()
            actions = [frames.RequestedAction(ActionType.SESSION_TYPE, {"SessionType": self.session_type, "Properties": {}})]
            if self.kms_key_id:
                session.kms_challenge_param = base64.b64encode(os.urandom(32)).decode()
                actions.append(frames.RequestedAction(ActionType.KMS_ENCRYPTION, {"KMSKeyId": self.kms_key_id, "Challenge": session.kms_challenge_param}))
            session.requested_actions = actions
            await self._send_output(session, PayloadType.HANDSHAKE_REQUEST, frames.handshake_request_payload(AGENT_VERSION, actions))
            session.tasks.append(asyncio.create_task(self._handshake_deadline(session)))
        else:
            self._start_pty(session)

    async def _handshake_deadline(self, session: _Session) -> None:
        await asyncio.sleep(self.agent_handshake_timeout)
        if session.handshake not in ("complete", "failed"):
            await self.close_channel(session.id, HANDSHAKE_TIMEOUT_MESSAGE)

    async def _agent_process(self, session: _Session, message: frames.ClientMessage) -> bool:
        """Handle one in-order client message; False = not ready for it (no ack, §5)."""
        kind = message.payload_type
        if session.handshake in ("requested", "challenge"):
            if kind == PayloadType.HANDSHAKE_RESPONSE and session.handshake == "requested":
                await self._on_handshake_response(session, message.payload)
            elif kind == PayloadType.ENC_CHALLENGE_RESPONSE and session.handshake == "challenge":
                await self._on_challenge_response(session, message.payload)
            else:  # the agent acks and drops it (§4 step 5); our client must never do this
                self._violation(f"{session.id}: input payload type {kind} (seq {message.sequence_number}) before HandshakeComplete")
            return True
        if not session.ready:
            self._violation(f"{session.id}: input payload type {kind} (seq {message.sequence_number}) before the session was ready")
            return True
        if kind == PayloadType.OUTPUT:
            data = message.payload
            if session.decrypt_key is not None:
                try:
                    data = session.decrypt_key.decrypt(data[:12], data[12:], None)
                except (InvalidTag, ValueError):
                    self._violation(f"{session.id}: input seq {message.sequence_number} does not decrypt with the client's key")
                    return True
            if len(data) > frames.MAX_CHUNK:
                self._violation(f"{session.id}: input seq {message.sequence_number} carries {len(data)} bytes; the limit is {frames.MAX_CHUNK} (§6)")
            self.counters.input_bytes += len(data)
            await self._write_pty(session, data)
        elif kind == PayloadType.SIZE:
            try:
                cols, rows = frames.parse_size(message.payload)
            except FrameError as exc:
                self._violation(f"{session.id}: {exc}")
                return True
            if self.withhold_first_size_ack and session.size_withheld_seq is None:
                session.size_withheld_seq = message.sequence_number
                session.size_withheld_at = time.monotonic()
                self.counters.size_withheld_seq = message.sequence_number
                return False
            if session.master is not None:
                fcntl.ioctl(session.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            self.counters.sizes.append((cols, rows))
        elif kind == PayloadType.FLAG:
            pass  # port sessions only
        else:
            self._violation(f"{session.id}: unexpected input payload type {kind} (seq {message.sequence_number})")
        return True

    async def _on_handshake_response(self, session: _Session, payload: bytes) -> None:
        try:
            _version, processed = frames.parse_handshake_response(payload)
        except FrameError as exc:
            self._violation(f"{session.id}: {exc}")
            return
        self.counters.handshake_responses.append(processed)
        if [p.action_type for p in processed] != [a.action_type for a in session.requested_actions]:
            self._violation(f"{session.id}: HandshakeResponse must answer each requested action once, in order")
        failed = [p for p in processed if p.status != ActionStatus.SUCCESS]
        if failed:
            # The agent cancels the session (§4 step 2).
            session.handshake = "failed"
            await self.close_channel(session.id, f"Handshake failed: {failed[0].action_type}: {failed[0].error}")
            return
        kms = next((p for p in processed if p.action_type == ActionType.KMS_ENCRYPTION), None)
        if kms is not None:
            if not self._finalize_kms(session, kms.result):
                session.handshake = "failed"
                await self.close_channel(session.id, "Handshake failed: the KMS data key could not be decrypted")
                return
            session.challenge = os.urandom(64)
            nonce = os.urandom(12)
            encrypted = nonce + session.encrypt_key.encrypt(nonce, session.challenge, None)
            session.handshake = "challenge"
            await self._send_output(session, PayloadType.ENC_CHALLENGE_REQUEST, frames.challenge_payload(encrypted))
            return
        await self._complete_handshake(session)

    def _finalize_kms(self, session: _Session, result: Any) -> bool:
        if not isinstance(result, dict) or not isinstance(result.get("KMSCipherTextKey"), str):
            self._violation(f"{session.id}: KMSEncryption ActionResult must carry KMSCipherTextKey (base64)")
            return False
        if self.kms_decrypt is None:
            raise RuntimeError("the emulator requests KMS but has no kms_decrypt")
        context = {"aws:ssm:SessionId": session.id, "aws:ssm:TargetId": session.target}
        if result.get("ChallengeAcknowledgement"):
            context["aws:ssm:RandomChallenge"] = session.kms_challenge_param
        try:
            plaintext = self.kms_decrypt(base64.b64decode(result["KMSCipherTextKey"]), context)
        except Exception as exc:
            self._violation(f"{session.id}: KMS could not decrypt the client's data key: {type(exc).__name__}")
            return False
        if len(plaintext) != 64:
            self._violation(f"{session.id}: the data key is {len(plaintext)} bytes, expected 64")
            return False
        session.encrypt_key = AESGCM(plaintext[:32])
        session.decrypt_key = AESGCM(plaintext[32:])
        return True

    async def _on_challenge_response(self, session: _Session, payload: bytes) -> None:
        try:
            encrypted = frames.parse_challenge(payload)
            answer = session.decrypt_key.decrypt(encrypted[:12], encrypted[12:], None)
        except (FrameError, InvalidTag, ValueError) as exc:
            self._violation(f"{session.id}: EncChallengeResponse does not decrypt: {type(exc).__name__}")
            answer = b""
        if answer != session.challenge:
            session.handshake = "failed"
            await self.close_channel(session.id, "Encryption challenge does not match!")
            return
        self.counters.challenges_verified += 1
        await self._complete_handshake(session)

    async def _complete_handshake(self, session: _Session) -> None:
        if self.handshake == "stuck":
            return  # never completes: the client's deadline must fire
        message = self.customer_message
        if session.encrypt_key is not None:
            message += "This session is encrypted using AWS KMS."
        elapsed_ns = int((time.monotonic() - session.handshake_started) * 1e9)
        await self._send_output(session, PayloadType.HANDSHAKE_COMPLETE, frames.handshake_complete_payload(elapsed_ns, message))
        session.handshake = "complete"
        self.counters.handshakes_completed += 1
        self._start_pty(session)

    # --- the PTY --------------------------------------------------------------------------------

    def _start_pty(self, session: _Session) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        try:
            # setsid -c: a new kernel session with the PTY as controlling terminal (job control works).
            # Clean signal dispositions and mask, like the agent's shell (clusters/spawn.py).
            session.pid = spawn_clean(["setsid", "-c", *session.argv], stdio=(slave, slave, slave), env=session.env)
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        session.master = master
        session.ready = session.ready or session.handshake == "complete"
        session.tasks.append(asyncio.create_task(self._pump(session)))

    async def _pump(self, session: _Session) -> None:
        """PTY -> output_stream_data, ≤1024 bytes each, UTF-8 sequences kept whole (§6)."""
        loop = asyncio.get_running_loop()
        fd = session.master
        while True:
            while len(session.unacked_out) >= MAX_UNACKED_OUTPUT:
                session.acked.clear()
                await session.acked.wait()
            await _readable(loop, fd)
            try:
                data = os.read(fd, frames.MAX_CHUNK - len(session.carry))
            except BlockingIOError:
                continue
            except OSError:  # EIO: the shell and everything on the PTY is gone
                data = b""
            if not data:
                break
            data = session.carry + data
            cut = _utf8_cut(data)
            session.carry = data[cut:]
            if cut:
                await self._send_output(session, PayloadType.OUTPUT, data[:cut])
        if session.carry:
            await self._send_output(session, PayloadType.OUTPUT, session.carry)
            session.carry = b""
        # The shell exited: give the client up to 2 s to ack, then end the session (§5, §6).
        deadline = time.monotonic() + FLUSH_ON_EXIT
        while session.unacked_out and time.monotonic() < deadline:
            session.acked.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.acked.wait(), max(0.0, deadline - time.monotonic()))
        await self.close_channel(session.id, "")

    async def _write_pty(self, session: _Session, data: bytes) -> None:
        if session.master is None:
            return
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            try:
                written = os.write(session.master, view)
            except BlockingIOError:
                await _writable(loop, session.master)
                continue
            except OSError:
                return
            view = view[written:]

    # --- output to the client ---------------------------------------------------------------------

    async def _send_output(self, session: _Session, payload_type: int, data: bytes) -> None:
        seq = session.next_out
        session.next_out += 1
        if session.encrypt_key is not None and payload_type in (PayloadType.OUTPUT, PayloadType.STDERR, PayloadType.EXIT_CODE):
            nonce = os.urandom(12)
            data = nonce + session.encrypt_key.encrypt(nonce, data, None)
        message = frames.ClientMessage(
            MessageType.OUTPUT_STREAM_DATA, seq, data, payload_type, flags=frames.FLAG_SYN if seq == 0 else 0
        )
        frame = frames.encode(message)
        session.out_ids[seq] = message.message_id
        while len(session.out_ids) > RECENT_WINDOW:
            session.out_ids.popitem(last=False)
        session.unacked_out[seq] = [frame, time.monotonic()]
        self.counters.output_messages += 1
        if payload_type == PayloadType.OUTPUT and session.handshake == "none":
            session.ready = True  # no handshake: the session is live once output flows
        if session.paused or session.ws is None:
            return  # kept unacked; sent after start_publication / on the next connection
        if self.reorder_output > 0 and payload_type == PayloadType.OUTPUT:
            if session.held is None:
                session.held = frame
                session.tasks.append(asyncio.create_task(self._release_held(session, 0.2)))
                return
            held, session.held = session.held, None
            self.reorder_output -= 1
            self.counters.output_reordered += 1
            await self._send(session.ws, frame)
            await self._send(session.ws, held)
            return
        await self._send(session.ws, frame)
        if self.duplicate_output > 0 and payload_type == PayloadType.OUTPUT:
            self.duplicate_output -= 1
            self.counters.output_duplicated += 1
            await self._send(session.ws, frame)

    async def _release_held(self, session: _Session, delay: float) -> None:
        await asyncio.sleep(delay)
        if session.held is not None:  # nothing came after it in time: send it late rather than never
            held, session.held = session.held, None
            await self._send(session.ws, held)

    async def _resend_loop(self, session: _Session) -> None:
        """The agent resends its oldest unacked message, never while paused (§5)."""
        while True:
            await asyncio.sleep(RESEND_TICK)
            if session.paused or session.ws is None or not session.unacked_out:
                continue
            seq, entry = next(iter(session.unacked_out.items()))
            if entry[0] is session.held:
                continue
            if time.monotonic() - entry[1] > OUTPUT_RTO:
                entry[1] = time.monotonic()
                self.counters.output_resends += 1
                await self._send(session.ws, entry[0])

    async def _resend_all(self, session: _Session) -> None:
        now = time.monotonic()
        for entry in list(session.unacked_out.values()):
            entry[1] = now
            self.counters.output_resends += 1
            await self._send(session.ws, entry[0])

    # --- service actions --------------------------------------------------------------------------

    async def pause(self, session_id: str, seconds: float) -> None:
        """pause_publication (with an odd, zeroed header, §7.9), `seconds` of silence, start_publication."""
        session = self.sessions[session_id]
        session.paused = True
        await self._send(session.ws, _odd_publication_frame(MessageType.PAUSE_PUBLICATION))
        await asyncio.sleep(seconds)
        session.paused = False
        await self._send(session.ws, frames.encode(frames.ClientMessage(MessageType.START_PUBLICATION, flags=frames.ACK_FLAGS)))
        await self._resend_all(session)

    async def close_channel(self, session_id: str, output: str) -> None:
        """channel_closed with `output` as the reason, then close the socket and end the session."""
        session = self.sessions[session_id]
        if session.ended:
            return
        ws = session.ws
        await self._send(ws, _channel_closed_frame(session.id, output))
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        await self._end_session(session)

    async def drop(self, session_id: str, *, forget_acks: int = 0) -> None:
        """Cut the client's socket without a close frame. `forget_acks`: treat the last N acks as lost in
        the drop, so that output is resent after the reconnect and the client sees duplicates (§7.7)."""
        session = self.sessions[session_id]
        for _ in range(min(forget_acks, len(session.recent_acked))):
            seq, frame = session.recent_acked.pop()
            session.unacked_out[seq] = [frame, time.monotonic()]
        session.unacked_out = collections.OrderedDict(sorted(session.unacked_out.items()))
        ws, session.ws = session.ws, None
        if ws is not None:
            ws.transport.abort()

    async def _close_later(self, session: _Session, delay: float, output: str) -> None:
        await asyncio.sleep(delay)
        await self.close_channel(session.id, output)

    async def _end_session(self, session: _Session) -> None:
        session.ended = True
        current = asyncio.current_task()
        tasks = [t for t in session.tasks if t is not current]
        session.tasks = []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if session.pid is not None:
            pid, session.pid = session.pid, None
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            await asyncio.to_thread(wait_exit_code, pid)
        if session.master is not None:
            master, session.master = session.master, None
            os.close(master)

    # --- helpers --------------------------------------------------------------------------------

    async def _send(self, ws: ServerConnection | None, frame: bytes) -> None:
        if ws is None:
            return
        with contextlib.suppress(ConnectionClosed):
            await ws.send(frame)

    def _violation(self, text: str) -> None:
        self.violations.append(text)


def _default_env() -> dict[str, str]:
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "TERM": "xterm-256color",
        "HOME": os.environ.get("HOME", "/"),
        "LANG": "C.UTF-8",
        "PS1": "$ ",
    }


def _new_token() -> str:
    return "emu-token-" + secrets.token_urlsafe(24)


def _fingerprint(message: frames.ClientMessage) -> bytes:
    return message.message_id.bytes + message.payload_type.to_bytes(4, "big") + message.digest


def _utf8_cut(data: bytes) -> int:
    """Where to split so that an incomplete UTF-8 sequence at the end waits for its next bytes."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # continuation byte: keep looking for the lead byte
        if byte >= 0xC0:
            needed = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) - back if back < needed else len(data)
        return len(data)
    return len(data)  # no lead byte in reach: invalid, pass it through (the agent does)


def _channel_closed_frame(session_id: str, output: str) -> bytes:
    return frames.encode(
        frames.ClientMessage(
            MessageType.CHANNEL_CLOSED, 0, frames.channel_closed_payload(session_id, output), PayloadType.NONE, flags=frames.ACK_FLAGS
        )
    )


def _odd_publication_frame(message_type: str) -> bytes:
    """HeaderLength and type only, everything else zero and no PayloadLength: receivers must cope (§2)."""
    return struct.pack(">I", frames.HEADER_LENGTH) + message_type.encode().ljust(frames.MESSAGE_TYPE_LENGTH, b" ") + bytes(40)


async def _readable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    future = loop.create_future()
    loop.add_reader(fd, lambda: future.done() or future.set_result(None))
    try:
        await future
    finally:
        loop.remove_reader(fd)


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    future = loop.create_future()
    loop.add_writer(fd, lambda: future.done() or future.set_result(None))
    try:
        await future
    finally:
        loop.remove_writer(fd)


class ThreadedEmulator:
    """An SsmEmulator on its own event loop in a daemon thread. `call(coro)` runs a coroutine there."""

    def __init__(self, **knobs: Any):
        self.loop = asyncio.new_event_loop()
        self.emulator = SsmEmulator(**knobs)
        self._thread = threading.Thread(target=self.loop.run_forever, name="ssm-emulator", daemon=True)

    def __enter__(self) -> ThreadedEmulator:
        self._thread.start()
        self.call(self.emulator.start())
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.call(self.emulator.stop(), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    def call(self, coro, timeout: float | None = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start_session(self, **kwargs: Any) -> tuple[str, str, str]:
        return self.call(_as_coro(self.emulator.start_session, **kwargs))

    def resume_session(self, session_id: str) -> tuple[str, str]:
        return self.call(_as_coro(self.emulator.resume_session, session_id))


async def _as_coro(function: Callable, *args: Any, **kwargs: Any) -> Any:
    return function(*args, **kwargs)


def run_in_thread(**knobs: Any) -> ThreadedEmulator:
    """`with run_in_thread(handshake=True) as emu: sid, url, token = emu.start_session()`"""
    return ThreadedEmulator(**knobs)
