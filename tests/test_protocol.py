import json

import pytest

from terminal import protocol
from terminal.actions import TerminalRefused, clean_working_directory


def test_client_frames_round_trip():
    assert protocol.decode_client_frame(protocol.encode_input(b"ls\r"), 1024) == (protocol.INPUT, b"ls\r")
    assert protocol.decode_client_frame(protocol.encode_resize(132, 43), 1024) == (protocol.RESIZE, (132, 43))
    assert protocol.decode_client_frame(protocol.encode_ack(65536), 1024) == (protocol.ACK, 65536)
    assert protocol.decode_client_frame(protocol.encode_terminate(), 1024) == (protocol.TERMINATE, None)
    # Wire layout is fixed: big-endian, one opcode byte.
    assert protocol.encode_resize(0x0102, 0x0304) == b"\x02\x01\x02\x03\x04"
    assert protocol.encode_ack(0x01020304) == b"\x03\x01\x02\x03\x04"


@pytest.mark.parametrize("frame, code", [
    (b"", protocol.CLOSE_BAD_FRAME),
    (b"\x09", protocol.CLOSE_BAD_FRAME),
    (b"\x02\x00", protocol.CLOSE_BAD_FRAME),
    (b"\x04\x00", protocol.CLOSE_BAD_FRAME),  # TERMINATE has no payload
    (b"\x03\x00\x00\x00\x00\x00", protocol.CLOSE_BAD_FRAME),
    (protocol.encode_resize(1001, 10), protocol.CLOSE_BAD_FRAME),
    (b"\x01" + b"x" * 2000, protocol.CLOSE_TOO_LARGE),
])
def test_bad_frames(frame, code):
    with pytest.raises(protocol.ProtocolError) as info:
        protocol.decode_client_frame(frame, 1024)
    assert info.value.code == code


def test_status_is_json():
    frame = protocol.encode_status(type="exit", reason="idle", message="No input.")
    assert frame[0] == protocol.STATUS
    assert json.loads(frame[1:]) == {"type": "exit", "reason": "idle", "message": "No input."}


@pytest.mark.parametrize("raw, expected", [(None, None), ("", None), ("/fsx/project", "/fsx/project"), ("/fsx/project/", "/fsx/project"), ("/", "/")])
def test_working_directory_accepted(raw, expected):
    assert clean_working_directory(raw) == expected


@pytest.mark.parametrize("raw", ["relative", "/a/../b", "/a/./b", "//etc", "/a\x00b", "/" + "a" * 5000])
def test_working_directory_refused(raw):
    with pytest.raises(TerminalRefused):
        clean_working_directory(raw)
