"""Wire format of the AWS SSM Session Manager data channel (spec: ../shared/reference/ssm-data-channel.md).

Every frame after the opening JSON text frame is one binary "ClientMessage" (spec §2):

    off size field
      0    4 HeaderLength u32 = 116 (the offset of PayloadLength, so it does not count that field)
      4   32 MessageType, ASCII, right-padded with spaces (readers strip NUL and whitespace)
     36    4 SchemaVersion u32 = 1
     40    8 CreatedDate u64, epoch milliseconds, non-zero
     48    8 SequenceNumber i64
     56    8 Flags u64 (bit0 SYN, bit1 FIN)
     64   16 MessageId: a UUID with its two 8-byte halves swapped
     80   32 PayloadDigest: raw SHA-256 of the payload (also for an empty payload)
    112    4 PayloadType u32
    116    4 PayloadLength u32
    120    n Payload

All integers are big-endian. This module is pure (no I/O) so the client and the test emulator share it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

HEADER_LENGTH = 116
PAYLOAD_OFFSET = HEADER_LENGTH + 4  # the payload starts after PayloadLength (spec §2, pitfall 2)
MESSAGE_TYPE_LENGTH = 32
SCHEMA_VERSION = 1
MAX_CHUNK = 1024  # largest input/output payload either side sends per message (spec §6)

# Fields after MessageType: schema, created, seq, flags, id, digest, payload type, payload length.
_FIXED = struct.Struct(">IQqQ16s32sII")
_HL = struct.Struct(">I")
if 4 + MESSAGE_TYPE_LENGTH + _FIXED.size != PAYLOAD_OFFSET:  # the layout constants agree (checked at import)
    raise ImportError("terminal.ssm.frames: header layout constants disagree")


class MessageType:
    """MessageType strings a Session Manager client sends or receives (spec §3)."""

    INPUT_STREAM_DATA = "input_stream_data"
    OUTPUT_STREAM_DATA = "output_stream_data"
    ACKNOWLEDGE = "acknowledge"
    CHANNEL_CLOSED = "channel_closed"
    START_PUBLICATION = "start_publication"
    PAUSE_PUBLICATION = "pause_publication"


# The service may send these two with odd headers; neither is validated, acked or sequenced (spec §2, §7.9).
PUBLICATION_TYPES = frozenset({MessageType.START_PUBLICATION, MessageType.PAUSE_PUBLICATION})


class PayloadType:
    """PayloadType values (spec §3); identical in the plugin and the agent."""

    NONE = 0  # acks and channel_closed
    OUTPUT = 1
    ERROR = 2
    SIZE = 3
    PARAMETER = 4
    HANDSHAKE_REQUEST = 5
    HANDSHAKE_RESPONSE = 6
    HANDSHAKE_COMPLETE = 7
    ENC_CHALLENGE_REQUEST = 8
    ENC_CHALLENGE_RESPONSE = 9
    FLAG = 10
    STDERR = 11
    EXIT_CODE = 12


class ActionStatus:
    """ProcessedClientAction.ActionStatus in a HandshakeResponse (spec §4 step 2)."""

    SUCCESS = 1
    FAILED = 2
    UNSUPPORTED = 3


class ActionType:
    SESSION_TYPE = "SessionType"
    KMS_ENCRYPTION = "KMSEncryption"


FLAG_SYN = 1
FLAG_FIN = 2
ACK_FLAGS = FLAG_SYN | FLAG_FIN  # acks and agent control messages carry 3 (spec §2)

# Session types a terminal can drive; Port sessions are not terminals (spec §4).
SHELL_SESSION_TYPES = frozenset({"Standard_Stream", "InteractiveCommands", "NonInteractiveCommands"})


class FrameError(ValueError):
    """A frame or payload that does not follow the wire format; the message says what is wrong."""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class ClientMessage:
    """One binary frame. `created_date` is epoch milliseconds (now by default)."""

    message_type: str
    sequence_number: int = 0
    payload: bytes = b""
    payload_type: int = PayloadType.NONE
    flags: int = 0
    message_id: uuid.UUID = field(default_factory=uuid.uuid4)
    created_date: int = field(default_factory=now_ms)
    schema_version: int = SCHEMA_VERSION

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.payload).digest()


def uuid_to_wire(value: uuid.UUID) -> bytes:
    """The plugin writes the UUID's low 8 bytes first (spec §2, pitfall 1)."""
    raw = value.bytes
    return raw[8:] + raw[:8]


def uuid_from_wire(raw: bytes) -> uuid.UUID:
    if len(raw) != 16:
        raise FrameError(f"MessageId must be 16 bytes, got {len(raw)}")
    return uuid.UUID(bytes=raw[8:] + raw[:8])


def encode(message: ClientMessage) -> bytes:
    """Serialize a frame exactly as the official plugin does (checked against the spec's known answer)."""
    try:
        name = message.message_type.encode("ascii")
    except UnicodeEncodeError:
        raise FrameError(f"MessageType {message.message_type!r} is not ASCII") from None
    if not name or len(name) > MESSAGE_TYPE_LENGTH:
        raise FrameError(f"MessageType must be 1-{MESSAGE_TYPE_LENGTH} ASCII characters, got {len(name)}")
    payload = bytes(message.payload)
    try:
        fixed = _FIXED.pack(
            message.schema_version,
            message.created_date,
            message.sequence_number,
            message.flags,
            uuid_to_wire(message.message_id),
            hashlib.sha256(payload).digest(),
            message.payload_type,
            len(payload),
        )
    except struct.error as exc:
        raise FrameError(f"header field out of range: {exc}") from None
    return _HL.pack(HEADER_LENGTH) + name.ljust(MESSAGE_TYPE_LENGTH, b" ") + fixed + payload


def _read_type(data: bytes) -> str:
    raw = data[4 : 4 + MESSAGE_TYPE_LENGTH]
    # Go writers pad with spaces, the JavaScript client with leading NULs: strip both (spec §2).
    try:
        return raw.strip(b"\x00 \t\r\n").decode("ascii")
    except UnicodeDecodeError:
        raise FrameError("MessageType is not ASCII") from None


def decode(data: bytes, *, strict: bool = False) -> ClientMessage:
    """Parse one binary frame; raise FrameError naming the first problem.

    Checks what the plugin checks (HL≠0, a type, CreatedDate≠0, the digest when there is a payload)
    plus HeaderLength == 116 and PayloadLength == the bytes actually present. `strict` (the test
    emulator) also requires SchemaVersion 1 and the digest of an empty payload. start_publication and
    pause_publication are returned with whatever could be read: their headers may be odd (spec §2).
    """
    data = bytes(data)
    message_type = _read_type(data) if len(data) >= 4 + MESSAGE_TYPE_LENGTH else ""
    if message_type in PUBLICATION_TYPES:
        return _decode_tolerant(data, message_type)
    if len(data) < PAYLOAD_OFFSET:
        raise FrameError(f"frame is {len(data)} bytes, shorter than the {PAYLOAD_OFFSET}-byte header")
    (header_length,) = _HL.unpack_from(data, 0)
    if header_length != HEADER_LENGTH:
        raise FrameError(f"HeaderLength is {header_length}, expected {HEADER_LENGTH}")
    if not message_type:
        raise FrameError("MessageType is empty")
    schema, created, seq, flags, wire_id, digest, payload_type, payload_length = _FIXED.unpack_from(data, 4 + MESSAGE_TYPE_LENGTH)
    if created == 0:
        raise FrameError(f"{message_type}: CreatedDate is zero")
    if strict and schema != SCHEMA_VERSION:
        raise FrameError(f"{message_type}: SchemaVersion is {schema}, expected {SCHEMA_VERSION}")
    payload = data[PAYLOAD_OFFSET:]
    if payload_length != len(payload):
        raise FrameError(f"{message_type}: PayloadLength is {payload_length} but {len(payload)} payload bytes follow the header")
    if (payload or strict) and hashlib.sha256(payload).digest() != digest:
        raise FrameError(f"{message_type} seq {seq}: PayloadDigest does not match the payload's SHA-256")
    return ClientMessage(
        message_type=message_type,
        sequence_number=seq,
        payload=payload,
        payload_type=payload_type,
        flags=flags,
        message_id=uuid_from_wire(wire_id),
        created_date=created,
        schema_version=schema,
    )


def _decode_tolerant(data: bytes, message_type: str) -> ClientMessage:
    """start/pause_publication: read the fields that are there, default the rest to zero."""
    fixed = data[4 + MESSAGE_TYPE_LENGTH : PAYLOAD_OFFSET].ljust(_FIXED.size, b"\x00")
    schema, created, seq, flags, wire_id, _digest, payload_type, _length = _FIXED.unpack(fixed)
    return ClientMessage(
        message_type=message_type,
        sequence_number=seq,
        payload=data[PAYLOAD_OFFSET:],
        payload_type=payload_type,
        flags=flags,
        message_id=uuid_from_wire(wire_id),
        created_date=created,
        schema_version=schema,
    )


# --- the opening frame (spec §1) -----------------------------------------------------------------


def opening_frame(token_value: str, *, client_id: str, client_version: str, request_id: str | None = None) -> str:
    """The first (TEXT) frame: authenticates the stream. Holds the token, so never log it."""
    return json.dumps(
        {
            "MessageSchemaVersion": "1.0",
            "RequestId": request_id or str(uuid.uuid4()),
            "TokenValue": token_value,
            "ClientId": client_id,
            "ClientVersion": client_version,
        }
    )


OPENING_KEYS = ("MessageSchemaVersion", "RequestId", "TokenValue", "ClientId", "ClientVersion")


# --- acknowledgements (spec §5) ------------------------------------------------------------------


@dataclass(frozen=True)
class Ack:
    message_type: str
    message_id: str
    sequence_number: int
    is_sequential: bool


def ack_payload(message: ClientMessage) -> bytes:
    return json.dumps(
        {
            "AcknowledgedMessageType": message.message_type,
            "AcknowledgedMessageId": str(message.message_id),
            "AcknowledgedMessageSequenceNumber": message.sequence_number,
            "IsSequentialMessage": True,
        },
        separators=(",", ":"),
    ).encode()


def build_ack(message: ClientMessage) -> ClientMessage:
    """The acknowledge frame for a sequenced message: seq 0, flags 3, PayloadType 0."""
    return ClientMessage(
        message_type=MessageType.ACKNOWLEDGE,
        sequence_number=0,
        flags=ACK_FLAGS,
        payload_type=PayloadType.NONE,
        payload=ack_payload(message),
    )


def parse_ack(payload: bytes) -> Ack:
    body = _json_object(payload, "acknowledge")
    try:
        message_type = body["AcknowledgedMessageType"]
        message_id = body["AcknowledgedMessageId"]
        seq = body["AcknowledgedMessageSequenceNumber"]
        sequential = body.get("IsSequentialMessage", True)
    except KeyError as exc:
        raise FrameError(f"acknowledge payload lacks {exc.args[0]}") from None
    if not isinstance(message_type, str) or not isinstance(message_id, str):
        raise FrameError("acknowledge payload: message type and id must be strings")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise FrameError("acknowledge payload: AcknowledgedMessageSequenceNumber must be an integer")
    if not isinstance(sequential, bool):
        raise FrameError("acknowledge payload: IsSequentialMessage must be a boolean")
    return Ack(message_type=message_type, message_id=message_id, sequence_number=seq, is_sequential=sequential)


# --- stream payloads -----------------------------------------------------------------------------


def size_payload(cols: int, rows: int) -> bytes:
    """PayloadType 3 (spec §6). Both are u32 on the agent side."""
    if not (0 < cols < 2**32 and 0 < rows < 2**32):
        raise FrameError(f"terminal size {cols}x{rows} out of range")
    return json.dumps({"cols": cols, "rows": rows}, separators=(",", ":")).encode()


def parse_size(payload: bytes) -> tuple[int, int]:
    body = _json_object(payload, "Size")
    cols, rows = body.get("cols"), body.get("rows")
    for name, value in (("cols", cols), ("rows", rows)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**32:
            raise FrameError(f"Size payload: {name} must be an unsigned 32-bit integer")
    return cols, rows


def parse_channel_closed(payload: bytes) -> str:
    """channel_closed's Output: the reason shown to the user ("" if none) (spec §6)."""
    try:
        body = json.loads(payload) if payload else {}
    except ValueError:
        return ""
    output = body.get("Output") if isinstance(body, dict) else None
    return output if isinstance(output, str) else ""


def channel_closed_payload(session_id: str, output: str, *, message_id: str | None = None) -> bytes:
    """What the service sends (used by the emulator)."""
    return json.dumps(
        {
            "MessageId": message_id or str(uuid.uuid4()),
            "CreatedDate": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "DestinationId": session_id,
            "SessionId": session_id,
            "MessageType": MessageType.CHANNEL_CLOSED,
            "SchemaVersion": 1,
            "Output": output,
        }
    ).encode()


# --- handshake payloads (spec §4) ----------------------------------------------------------------


@dataclass(frozen=True)
class RequestedAction:
    action_type: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class HandshakeRequest:
    agent_version: str
    actions: tuple[RequestedAction, ...]


@dataclass(frozen=True)
class ProcessedAction:
    action_type: str
    status: int
    result: Any = None
    error: str = ""


def handshake_request_payload(agent_version: str, actions: list[RequestedAction]) -> bytes:
    return json.dumps(
        {
            "AgentVersion": agent_version,
            "RequestedClientActions": [{"ActionType": a.action_type, "ActionParameters": a.parameters} for a in actions],
        }
    ).encode()


def parse_handshake_request(payload: bytes) -> HandshakeRequest:
    body = _json_object(payload, "HandshakeRequest")
    actions = body.get("RequestedClientActions")
    if not isinstance(actions, list):
        raise FrameError("HandshakeRequest: RequestedClientActions must be a list")
    parsed = []
    for entry in actions:
        if not isinstance(entry, dict) or not isinstance(entry.get("ActionType"), str):
            raise FrameError("HandshakeRequest: every action needs a string ActionType")
        params = entry.get("ActionParameters")
        parsed.append(RequestedAction(entry["ActionType"], params if isinstance(params, dict) else {}))
    version = body.get("AgentVersion")
    return HandshakeRequest(agent_version=version if isinstance(version, str) else "", actions=tuple(parsed))


def handshake_response_payload(client_version: str, processed: list[ProcessedAction]) -> bytes:
    """One entry per requested action; ActionStatus always set (the plugin's bug is not copied, spec §4)."""
    errors = [p.error for p in processed if p.status != ActionStatus.SUCCESS and p.error]
    return json.dumps(
        {
            "ClientVersion": client_version,
            "ProcessedClientActions": [
                {"ActionType": p.action_type, "ActionStatus": p.status, "ActionResult": p.result, "Error": p.error} for p in processed
            ],
            "Errors": errors or None,
        }
    ).encode()


def parse_handshake_response(payload: bytes) -> tuple[str, list[ProcessedAction]]:
    body = _json_object(payload, "HandshakeResponse")
    entries = body.get("ProcessedClientActions")
    if not isinstance(entries, list):
        raise FrameError("HandshakeResponse: ProcessedClientActions must be a list")
    processed = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("ActionType"), str):
            raise FrameError("HandshakeResponse: every action needs a string ActionType")
        status = entry.get("ActionStatus")
        if status not in (ActionStatus.SUCCESS, ActionStatus.FAILED, ActionStatus.UNSUPPORTED):
            raise FrameError(f"HandshakeResponse: ActionStatus {status!r} is not 1, 2 or 3")
        error = entry.get("Error", "")
        processed.append(ProcessedAction(entry["ActionType"], status, entry.get("ActionResult"), error if isinstance(error, str) else ""))
    version = body.get("ClientVersion")
    if not isinstance(version, str) or not version:
        raise FrameError("HandshakeResponse: ClientVersion must be a non-empty string")
    return version, processed


def handshake_complete_payload(time_to_complete_ns: int, customer_message: str = "") -> bytes:
    return json.dumps({"HandshakeTimeToComplete": time_to_complete_ns, "CustomerMessage": customer_message}).encode()


def parse_handshake_complete(payload: bytes) -> str:
    """Returns CustomerMessage ("" if none)."""
    body = _json_object(payload, "HandshakeComplete")
    message = body.get("CustomerMessage")
    return message if isinstance(message, str) else ""


def challenge_payload(challenge: bytes) -> bytes:
    """EncChallengeRequest / EncChallengeResponse: Go marshals []byte as standard base64."""
    return json.dumps({"Challenge": base64.b64encode(challenge).decode("ascii")}).encode()


def parse_challenge(payload: bytes) -> bytes:
    body = _json_object(payload, "EncChallenge")
    value = body.get("Challenge")
    if not isinstance(value, str):
        raise FrameError("EncChallenge payload: Challenge must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise FrameError("EncChallenge payload: Challenge is not valid base64") from None


def _json_object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        body = json.loads(payload)
    except ValueError:
        raise FrameError(f"{what} payload is not valid JSON") from None
    if not isinstance(body, dict):
        raise FrameError(f"{what} payload must be a JSON object")
    return body
