"""Wire format of the SSM data channel: the spec's known-answer vector, round trips, every rejection."""

import base64
import hashlib
import json
import struct
import uuid

import pytest

from terminal.ssm import frames
from terminal.ssm.frames import ActionStatus, ClientMessage, FrameError, MessageType, PayloadType, ProcessedAction

KNOWN_ID = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
# Spec §2, produced by the official plugin's serializer.
KNOWN_HEX = (
    "00000074"
    + "696e7075745f73747265616d5f64617461"
    + "20" * 15
    + "00000001"
    + "0000018bcfe56800"
    + "0000000000000005"
    + "0000000000000000"
    + "8899aabbccddeeff0011223344556677"
    + "1d887ce0f8672e4914d9000e801cd74ecd805dd9366c0bc42dc16adc0197dc2f"
    + "00000001"
    + "00000003"
    + "6c730d"
)


def known_message() -> ClientMessage:
    return ClientMessage(
        message_type=MessageType.INPUT_STREAM_DATA,
        sequence_number=5,
        payload=b"ls\r",
        payload_type=PayloadType.OUTPUT,
        flags=0,
        message_id=KNOWN_ID,
        created_date=1700000000000,
    )


def test_known_answer_vector_byte_for_byte():
    encoded = frames.encode(known_message())
    assert encoded.hex() == KNOWN_HEX
    assert len(encoded) == 123
    assert frames.decode(bytes.fromhex(KNOWN_HEX)) == known_message()


def test_header_layout():
    encoded = frames.encode(known_message())
    assert struct.unpack(">I", encoded[:4])[0] == 116  # HL counts up to, not including, PayloadLength
    assert encoded[112:116] == b"\x00\x00\x00\x01"  # PayloadType
    assert encoded[116:120] == b"\x00\x00\x00\x03"  # PayloadLength
    assert encoded[120:] == b"ls\r"
    assert encoded[80:112] == hashlib.sha256(b"ls\r").digest()  # raw digest, not hex


def test_uuid_halves_swapped_both_ways():
    wire = frames.uuid_to_wire(KNOWN_ID)
    assert wire.hex() == "8899aabbccddeeff0011223344556677"
    assert frames.uuid_from_wire(wire) == KNOWN_ID
    random_id = uuid.uuid4()
    assert frames.uuid_from_wire(frames.uuid_to_wire(random_id)) == random_id
    with pytest.raises(FrameError, match="16 bytes"):
        frames.uuid_from_wire(b"\x00" * 15)


@pytest.mark.parametrize(
    "message",
    [
        ClientMessage(MessageType.OUTPUT_STREAM_DATA, 0, b"", PayloadType.OUTPUT, flags=frames.FLAG_SYN),
        ClientMessage(MessageType.OUTPUT_STREAM_DATA, 2**62, bytes(range(256)) * 4, PayloadType.OUTPUT),
        ClientMessage(MessageType.ACKNOWLEDGE, 0, b'{"a":1}', PayloadType.NONE, flags=frames.ACK_FLAGS),
        ClientMessage(MessageType.CHANNEL_CLOSED, 0, frames.channel_closed_payload("s-1", "bye"), flags=3),
        ClientMessage("x" * 32, -1, b"\xff\x00", 12, flags=2**64 - 1, schema_version=7),
    ],
)
def test_round_trip(message):
    encoded = frames.encode(message)
    assert len(encoded) == frames.PAYLOAD_OFFSET + len(message.payload)
    decoded = frames.decode(encoded)
    assert decoded == message
    assert frames.encode(decoded) == encoded


def test_empty_payload_still_carries_its_digest():
    encoded = frames.encode(ClientMessage(MessageType.ACKNOWLEDGE, payload=b""))
    assert encoded[80:112] == hashlib.sha256(b"").digest()
    assert frames.decode(encoded, strict=True).payload == b""


def test_reader_strips_nul_and_space_padding():
    encoded = bytearray(frames.encode(known_message()))
    name = MessageType.INPUT_STREAM_DATA.encode()
    encoded[4:36] = name.rjust(32, b"\x00")  # the JavaScript client pads on the left with NULs
    assert frames.decode(bytes(encoded)).message_type == MessageType.INPUT_STREAM_DATA
    encoded[4:36] = name.ljust(32, b"\x00")
    assert frames.decode(bytes(encoded)).message_type == MessageType.INPUT_STREAM_DATA


def _mutate(offset: int, value: bytes, base: bytes | None = None) -> bytes:
    data = bytearray(base or frames.encode(known_message()))
    data[offset : offset + len(value)] = value
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", "shorter than the 120-byte header"),
        (frames.encode(known_message())[:119], "shorter than the 120-byte header"),
        (_mutate(0, struct.pack(">I", 120)), "HeaderLength is 120, expected 116"),
        (_mutate(0, struct.pack(">I", 0)), "HeaderLength is 0"),
        (_mutate(4, b" " * 32), "MessageType is empty"),
        (_mutate(4, b"\x00" * 32), "MessageType is empty"),
        (_mutate(4, b"\xffnput_stream_data"), "not ASCII"),
        (_mutate(40, bytes(8)), "CreatedDate is zero"),
        (_mutate(116, struct.pack(">I", 4)), "PayloadLength is 4 but 3 payload bytes"),
        (_mutate(116, struct.pack(">I", 2)), "PayloadLength is 2 but 3 payload bytes"),
        (frames.encode(known_message()) + b"x", "PayloadLength is 3 but 4 payload bytes"),
        (_mutate(120, b"LS\r"), "PayloadDigest does not match"),
        (_mutate(80, bytes(32)), "PayloadDigest does not match"),
        (_mutate(80, hashlib.sha256(b"ls\r").hexdigest()[:32].encode()), "PayloadDigest does not match"),
    ],
)
def test_decode_rejects(data, error):
    with pytest.raises(FrameError, match=error):
        frames.decode(data)


def test_strict_mode_checks_empty_digest_and_schema():
    empty = frames.encode(ClientMessage(MessageType.ACKNOWLEDGE, payload=b""))
    zero_digest = _mutate(80, bytes(32), empty)
    assert frames.decode(zero_digest).payload == b""  # the plugin skips the digest of an empty payload
    with pytest.raises(FrameError, match="PayloadDigest"):
        frames.decode(zero_digest, strict=True)
    schema_2 = _mutate(36, struct.pack(">I", 2))
    assert frames.decode(schema_2).schema_version == 2
    with pytest.raises(FrameError, match="SchemaVersion is 2"):
        frames.decode(schema_2, strict=True)


def test_publication_messages_tolerate_odd_headers():
    for kind in (MessageType.PAUSE_PUBLICATION, MessageType.START_PUBLICATION):
        name = kind.encode().ljust(32, b" ")
        only_type = struct.pack(">I", 0) + name  # HL 0, nothing after the type
        decoded = frames.decode(only_type, strict=True)
        assert decoded.message_type == kind and decoded.payload == b""
        zeroed = struct.pack(">I", 116) + name + bytes(84)
        assert frames.decode(zeroed).created_date == 0
        bad_digest = _mutate(120, b"junk", frames.encode(ClientMessage(kind, payload=b"ok!!")))
        assert frames.decode(bad_digest).payload == b"junk"


def test_encode_rejects_bad_fields():
    with pytest.raises(FrameError, match="1-32 ASCII"):
        frames.encode(ClientMessage("x" * 33))
    with pytest.raises(FrameError, match="1-32 ASCII"):
        frames.encode(ClientMessage(""))
    with pytest.raises(FrameError, match="not ASCII"):
        frames.encode(ClientMessage("ünput"))
    with pytest.raises(FrameError, match="out of range"):
        frames.encode(ClientMessage(MessageType.ACKNOWLEDGE, flags=-1))
    with pytest.raises(FrameError, match="out of range"):
        frames.encode(ClientMessage(MessageType.ACKNOWLEDGE, sequence_number=2**63))


def test_ack_frame_and_payload():
    acked = ClientMessage(MessageType.OUTPUT_STREAM_DATA, 42, b"x", PayloadType.OUTPUT, message_id=KNOWN_ID)
    ack = frames.build_ack(acked)
    assert (ack.message_type, ack.sequence_number, ack.flags, ack.payload_type) == (MessageType.ACKNOWLEDGE, 0, 3, 0)
    assert ack.payload == (
        b'{"AcknowledgedMessageType":"output_stream_data",'
        b'"AcknowledgedMessageId":"00112233-4455-6677-8899-aabbccddeeff",'
        b'"AcknowledgedMessageSequenceNumber":42,"IsSequentialMessage":true}'
    )
    parsed = frames.parse_ack(frames.decode(frames.encode(ack)).payload)
    assert parsed == frames.Ack(MessageType.OUTPUT_STREAM_DATA, str(KNOWN_ID), 42, True)


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"not json", "not valid JSON"),
        (b"[1]", "JSON object"),
        (b'{"AcknowledgedMessageType":"x","AcknowledgedMessageId":"y"}', "lacks AcknowledgedMessageSequenceNumber"),
        (b'{"AcknowledgedMessageType":1,"AcknowledgedMessageId":"y","AcknowledgedMessageSequenceNumber":1}', "strings"),
        (b'{"AcknowledgedMessageType":"x","AcknowledgedMessageId":"y","AcknowledgedMessageSequenceNumber":"1"}', "integer"),
        (b'{"AcknowledgedMessageType":"x","AcknowledgedMessageId":"y","AcknowledgedMessageSequenceNumber":true}', "integer"),
        (
            b'{"AcknowledgedMessageType":"x","AcknowledgedMessageId":"y","AcknowledgedMessageSequenceNumber":1,"IsSequentialMessage":1}',
            "boolean",
        ),
    ],
)
def test_parse_ack_rejects(payload, error):
    with pytest.raises(FrameError, match=error):
        frames.parse_ack(payload)


def test_opening_frame_has_the_five_keys():
    text = frames.opening_frame("TOKEN", client_id="c-id", client_version="1.2.650.0", request_id="r-id")
    assert json.loads(text) == {
        "MessageSchemaVersion": "1.0",
        "RequestId": "r-id",
        "TokenValue": "TOKEN",
        "ClientId": "c-id",
        "ClientVersion": "1.2.650.0",
    }
    assert tuple(json.loads(text)) == frames.OPENING_KEYS
    uuid.UUID(json.loads(frames.opening_frame("t", client_id="c", client_version="v"))["RequestId"])


def test_size_payload():
    assert frames.size_payload(120, 40) == b'{"cols":120,"rows":40}'
    assert frames.parse_size(b'{"cols":120,"rows":40}') == (120, 40)
    with pytest.raises(FrameError, match="out of range"):
        frames.size_payload(0, 40)
    for bad in (b'{"cols":"1","rows":2}', b'{"cols":1}', b'{"cols":-1,"rows":2}', b'{"cols":1,"rows":4294967296}', b"[]"):
        with pytest.raises(FrameError):
            frames.parse_size(bad)


def test_handshake_request_and_response():
    request = frames.handshake_request_payload(
        "3.3.0.0",
        [
            frames.RequestedAction("SessionType", {"SessionType": "Standard_Stream", "Properties": {}}),
            frames.RequestedAction("KMSEncryption", {"KMSKeyId": "arn:k", "Challenge": "abc"}),
        ],
    )
    parsed = frames.parse_handshake_request(request)
    assert parsed.agent_version == "3.3.0.0"
    assert [a.action_type for a in parsed.actions] == ["SessionType", "KMSEncryption"]
    assert parsed.actions[1].parameters["KMSKeyId"] == "arn:k"
    # The observed payload of the official plugin for a plain shell (spec §4 step 2).
    response = frames.handshake_response_payload("1.2.0.0", [ProcessedAction("SessionType", ActionStatus.SUCCESS)])
    assert json.loads(response) == {
        "ClientVersion": "1.2.0.0",
        "ProcessedClientActions": [{"ActionType": "SessionType", "ActionStatus": 1, "ActionResult": None, "Error": ""}],
        "Errors": None,
    }
    failed = frames.handshake_response_payload("v", [ProcessedAction("KMSEncryption", ActionStatus.FAILED, error="no KMS")])
    assert json.loads(failed)["Errors"] == ["no KMS"]
    version, processed = frames.parse_handshake_response(failed)
    assert version == "v" and processed == [ProcessedAction("KMSEncryption", 2, None, "no KMS")]


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b'{"AgentVersion":"x"}', "RequestedClientActions must be a list"),
        (b'{"RequestedClientActions":[{"ActionParameters":{}}]}', "string ActionType"),
        (b"{", "not valid JSON"),
    ],
)
def test_parse_handshake_request_rejects(payload, error):
    with pytest.raises(FrameError, match=error):
        frames.parse_handshake_request(payload)


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b'{"ClientVersion":"v"}', "must be a list"),
        (b'{"ClientVersion":"v","ProcessedClientActions":[{"ActionType":"SessionType","ActionStatus":0}]}', "is not 1, 2 or 3"),
        (b'{"ClientVersion":"","ProcessedClientActions":[]}', "ClientVersion"),
        (b'{"ClientVersion":"v","ProcessedClientActions":[1]}', "string ActionType"),
    ],
)
def test_parse_handshake_response_rejects(payload, error):
    with pytest.raises(FrameError, match=error):
        frames.parse_handshake_response(payload)


def test_handshake_complete_and_challenge():
    assert frames.parse_handshake_complete(frames.handshake_complete_payload(1234, "hi")) == "hi"
    assert frames.parse_handshake_complete(b'{"HandshakeTimeToComplete":1}') == ""
    blob = bytes(range(70))
    payload = frames.challenge_payload(blob)
    assert json.loads(payload) == {"Challenge": base64.b64encode(blob).decode()}
    assert frames.parse_challenge(payload) == blob
    with pytest.raises(FrameError, match="base64"):
        frames.parse_challenge(b'{"Challenge":"***"}')
    with pytest.raises(FrameError, match="base64 string"):
        frames.parse_challenge(b'{"Challenge":1}')


def test_channel_closed_output():
    assert frames.parse_channel_closed(frames.channel_closed_payload("s", "Idle timeout")) == "Idle timeout"
    body = json.loads(frames.channel_closed_payload("s-1", ""))
    assert body["SessionId"] == body["DestinationId"] == "s-1" and body["MessageType"] == "channel_closed"
    assert frames.parse_channel_closed(b"") == ""
    assert frames.parse_channel_closed(b"garbage") == ""
    assert frames.parse_channel_closed(b'{"Output":5}') == ""
