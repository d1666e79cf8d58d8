"""The browser ↔ server terminal wire protocol (docs/terminal-protocol.md).

Binary WebSocket frames, first byte an opcode. Pure functions only: the consumer does the I/O.
"""

import json
import struct

# Client → server
INPUT = 0x01
RESIZE = 0x02
ACK = 0x03
TERMINATE = 0x04  # no payload: end the session now (not just this connection)
# Server → client
OUTPUT = 0x81
STATUS = 0x82

OUTPUT_PREFIX = bytes([OUTPUT])
MAX_DIMENSION = 1000

# WebSocket close codes (1000/1001 are standard; 4xxx are ours).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_BAD_FRAME = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_TAKEN_OVER = 4409
CLOSE_TOO_LARGE = 4413
CLOSE_BACKEND_ERROR = 4500

_SIZE = struct.Struct(">HH")
_ACK = struct.Struct(">I")


class ProtocolError(Exception):
    """A frame the server refuses; `code` is the close code to use."""

    def __init__(self, message: str, code: int = CLOSE_BAD_FRAME):
        super().__init__(message)
        self.code = code


def check_size(cols: int, rows: int) -> tuple[int, int]:
    if not (1 <= cols <= MAX_DIMENSION and 1 <= rows <= MAX_DIMENSION):
        raise ProtocolError(f"Terminal size {cols}x{rows} is out of range (1–{MAX_DIMENSION}).")
    return cols, rows


def decode_client_frame(frame: bytes, max_frame: int) -> tuple[int, object]:
    """Return (opcode, value): INPUT → bytes, RESIZE → (cols, rows), ACK → int, TERMINATE → None."""
    if len(frame) > max_frame:
        raise ProtocolError(f"Frame of {len(frame)} bytes exceeds the {max_frame}-byte limit.", CLOSE_TOO_LARGE)
    if not frame:
        raise ProtocolError("Empty frame.")
    opcode = frame[0]
    if opcode == INPUT:
        return INPUT, frame[1:]
    if opcode == RESIZE:
        if len(frame) != 1 + _SIZE.size:
            raise ProtocolError("RESIZE takes exactly 4 bytes (cols, rows).")
        return RESIZE, check_size(*_SIZE.unpack_from(frame, 1))
    if opcode == ACK:
        if len(frame) != 1 + _ACK.size:
            raise ProtocolError("ACK takes exactly 4 bytes.")
        return ACK, _ACK.unpack_from(frame, 1)[0]
    if opcode == TERMINATE:
        if len(frame) != 1:
            raise ProtocolError("TERMINATE takes no payload.")
        return TERMINATE, None
    raise ProtocolError(f"Unknown opcode 0x{opcode:02x}.")


def encode_status(**fields) -> bytes:
    return bytes([STATUS]) + json.dumps(fields, separators=(",", ":")).encode()


# Client-side encoders: used by tests, the benchmark and any non-browser client.
def encode_input(data: bytes) -> bytes:
    return bytes([INPUT]) + data


def encode_resize(cols: int, rows: int) -> bytes:
    return bytes([RESIZE]) + _SIZE.pack(cols, rows)


def encode_ack(count: int) -> bytes:
    return bytes([ACK]) + _ACK.pack(count)


def encode_terminate() -> bytes:
    return bytes([TERMINATE])
