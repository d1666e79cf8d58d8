"""The SSM data-channel client against the strict local emulator (MGS + agent + a real PTY).

Every test that uses the emulator ends by asserting that it saw no protocol violation.
"""

import asyncio
import logging
import re
import socket
import struct
import time
import uuid

import boto3
import pytest
from moto import mock_aws
from websockets.asyncio.client import connect

from terminal.ssm import frames
from terminal.ssm.channel import DataChannel, DataChannelError
from terminal.ssm.frames import ActionStatus, MessageType, PayloadType
from tests.ssm_emulator import SsmEmulator, run_in_thread

KMS_KEY = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


class Probe:
    """Collects what the channel reports."""

    def __init__(self):
        self.output = bytearray()
        self.closed: list[str] = []

    def on_output(self, data: bytes) -> None:
        self.output += data

    def on_closed(self, reason: str) -> None:
        self.closed.append(reason)

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    async def wait_for(self, needle: str, timeout: float = 5.0) -> str:
        await until(lambda: needle in self.text, timeout, f"{needle!r} in the output; got {self.text[-400:]!r}")
        return self.text

    async def wait_closed(self, timeout: float = 5.0) -> str:
        await until(lambda: self.closed, timeout, "on_closed")
        return self.closed[0]


async def until(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def emulators():
    """make(**knobs) -> a started emulator; all are stopped and checked for violations at the end."""
    started: list[SsmEmulator] = []

    async def make(**knobs) -> SsmEmulator:
        emulator = await SsmEmulator(**knobs).start()
        started.append(emulator)
        return emulator

    yield make
    for emulator in started:
        await emulator.stop()


@pytest.fixture
async def channels():
    """open_channel(emulator, **kwargs) -> (channel, probe, session_id); every channel is closed at the end."""
    opened: list[DataChannel] = []

    def build(emulator: SsmEmulator, **kwargs):
        session_id, url, token = emulator.start_session()
        probe = Probe()
        channel = DataChannel(
            url, token, session_id=session_id, target=emulator.target, on_output=probe.on_output, on_closed=probe.on_closed, **kwargs
        )
        opened.append(channel)
        return channel, probe, session_id

    async def open_channel(emulator: SsmEmulator, **kwargs):
        channel, probe, session_id = build(emulator, **kwargs)
        await channel.open()
        return channel, probe, session_id

    open_channel.build = build
    yield open_channel
    for channel in opened:
        await channel.close()


async def prompt(probe: Probe) -> None:
    await probe.wait_for("$ ")


async def run(channel: DataChannel, probe: Probe, command: str, marker: str, timeout: float = 5.0) -> str:
    """Type a command that ends by printing `marker` (built so that its echo differs from its output)."""
    channel.send_input(command.encode() + b"\r")
    return await probe.wait_for(marker, timeout)


async def test_open_without_handshake_echo_through_a_real_pty(emulators, channels):
    emu = await emulators()
    channel, probe, sid = await channels(emu)
    assert channel.ready and channel.session_type == "" and channel.customer_message == ""
    await prompt(probe)
    await run(channel, probe, "echo hel''lo", "hello\r\n")
    await until(lambda: emu.unacked_output(sid) == 0, what="every output message acked")
    assert emu.counters.handshake_responses == []
    assert emu.counters.acks_received == emu.counters.output_messages
    assert emu.violations == []


async def test_open_with_handshake(emulators, channels):
    emu = await emulators(handshake=True, customer_message="Welcome to the head node.")
    channel, probe, _ = await channels(emu)
    assert channel.session_type == "Standard_Stream"
    assert channel.customer_message == "Welcome to the head node."
    assert [[(p.action_type, p.status) for p in r] for r in emu.counters.handshake_responses] == [[("SessionType", ActionStatus.SUCCESS)]]
    await prompt(probe)
    await run(channel, probe, "echo hand''shake", "handshake\r\n")
    assert emu.violations == []


async def test_input_and_size_before_ready_are_queued(emulators, channels):
    emu = await emulators(handshake=True)
    channel, probe, _ = channels.build(emu)
    channel.resize(50, 20)
    channel.resize(100, 40)  # only the latest size goes out
    assert channel.send_input(b"stty size\r")
    await channel.open()
    await probe.wait_for("40 100\r\n")
    assert emu.counters.sizes == [(100, 40)]
    assert emu.violations == []  # the emulator flags any input before HandshakeComplete


async def test_long_input_is_chunked_and_utf8_output_is_not_split(emulators, channels):
    emu = await emulators()
    channel, probe, _ = await channels(emu)
    await prompt(probe)
    chunks: list[bytes] = []
    channel._on_output = lambda data: (chunks.append(data), probe.on_output(data))
    before = emu.counters.input_messages
    await run(channel, probe, "printf %s " + "x" * 3000 + " | wc -c", "3000\r\n")
    assert emu.counters.input_messages - before == 3  # 1024 + 1024 + the rest (the emulator flags > 1024)
    await run(channel, probe, "printf '€%.0s' {1..1500}; echo; echo E''ND", "END\r\n")
    assert "€" * 1500 in probe.text
    assert len(chunks) > 3
    for chunk in chunks:
        chunk.decode("utf-8")  # every message holds whole characters
    assert emu.violations == []


async def test_resize_shows_in_stty_size(emulators, channels):
    emu = await emulators()
    channel, probe, _ = await channels(emu)
    await prompt(probe)
    channel.resize(132, 43)
    await run(channel, probe, "stty size", "43 132\r\n")
    channel.resize(80, 24)
    await run(channel, probe, "stty size; echo do''ne", "24 80\r\ndone")
    assert emu.counters.sizes == [(132, 43), (80, 24)]
    assert emu.violations == []


async def test_retransmission_after_a_withheld_ack(emulators, channels):
    emu = await emulators(withhold_first_size_ack=True)
    channel, probe, _ = await channels(emu)
    await prompt(probe)
    channel.resize(90, 30)
    # The keystrokes go out right behind the unacked Size; the agent buffers them until the resend.
    await run(channel, probe, "stty size", "30 90\r\n")
    assert emu.counters.size_withheld_seq == 0
    assert 0.1 <= emu.counters.size_resend_delay <= 1.5  # about one RTO (200 ms start, §5)
    assert channel.resends >= 1 and emu.counters.input_resends >= 1
    assert emu.violations == []


async def test_reordered_and_duplicated_output_is_delivered_once_in_order(emulators, channels):
    emu = await emulators()
    channel, probe, sid = await channels(emu)
    await prompt(probe)
    emu.reorder_output = 3
    emu.duplicate_output = 3
    text = await run(channel, probe, "seq 1 3000; echo DONE-$((1+1))", "DONE-2")
    expected = "".join(f"{i}\r\n" for i in range(1, 3001))
    assert text.count(expected) == 1
    assert len(re.findall(r"\r\n2999\r\n", text)) == 1
    assert emu.counters.output_reordered == 3 and emu.counters.output_duplicated == 3
    await until(lambda: emu.unacked_output(sid) == 0, what="all output acked")
    assert channel.duplicates == 3
    assert emu.counters.duplicate_acks == 3  # every duplicate was acked again
    assert emu.violations == []


async def test_pause_suspends_resends_and_start_resumes(emulators, channels):
    emu = await emulators()
    channel, probe, sid = await channels(emu)
    await prompt(probe)
    pause = asyncio.create_task(emu.pause(sid, 0.8))
    await until(lambda: channel.paused, what="paused")
    channel.send_input(b"echo paused-''ok\r")
    await asyncio.sleep(0.5)  # well beyond the RTO: a client that ignored the pause would have resent
    assert "paused-ok" not in probe.text
    assert channel.resends == 0
    await pause
    await probe.wait_for("paused-ok\r\n")
    assert not channel.paused
    assert emu.counters.frames_while_paused == 1 and emu.counters.resends_while_paused == 0
    assert channel.resends >= 1  # the message lost during the pause was resent after start_publication
    assert emu.violations == []


async def test_channel_closed_reason_reaches_on_closed(emulators, channels):
    reason = "Your session has been terminated due to inactivity."
    emu = await emulators(channel_closed_after=(0.3, reason))
    channel, probe, _ = await channels(emu)
    assert await probe.wait_closed() == reason
    assert channel.closed
    assert not channel.send_input(b"x")
    await asyncio.sleep(0.05)
    assert probe.closed == [reason]  # exactly once
    assert emu.violations == []


async def test_exit_flushes_output_then_closes_with_the_default_reason(emulators, channels):
    emu = await emulators()
    channel, probe, sid = await channels(emu)
    await prompt(probe)
    channel.send_input(b"echo bye-$((6*7)); exit\r")
    assert await probe.wait_closed() == "The session was closed by AWS."
    assert "bye-42" in probe.text
    assert emu.unacked_output(sid) == 0
    assert emu.violations == []


async def test_abrupt_drop_resumes_with_a_new_token_and_keeps_the_sequence(emulators, channels):
    emu = await emulators()
    issued: list[str] = []

    async def resume():
        url, token = emu.resume_session(sid)
        issued.append(token)
        return url, token

    channel, probe, sid = await channels(emu, resume=resume)
    await prompt(probe)
    channel.send_input(b"for i in $(seq 1 150); do echo line-$i; sleep 0.004; done; echo FIN-$((2+2))\r")
    await probe.wait_for("line-30\r\n")
    await emu.drop(sid, forget_acks=3)  # the last 3 acks are "lost": those messages come again
    assert channel.send_input(b"echo after-''drop\r")  # typed while disconnected: resent after resume
    await probe.wait_for("FIN-4", timeout=10)
    await probe.wait_for("after-drop\r\n")
    await run(channel, probe, "echo ag''ain", "again\r\n")  # typed after the resume: the sequence continues
    numbers = [int(n) for n in re.findall(r"line-(\d+)\r\n", probe.text)]
    assert numbers == list(range(1, 151))  # nothing lost, nothing doubled, in order
    assert len(issued) == 1 and channel.reconnects == 1
    assert emu.counters.connections == 2 and emu.counters.opening_frames == 2
    assert channel.duplicates >= 3
    await until(lambda: emu.unacked_output(sid) == 0, what="all output acked after the resume")
    assert probe.closed == []
    assert emu.violations == []  # incl. contiguous client seqs across the reconnect and the new token


async def test_drop_without_resume_ends_the_session(emulators, channels):
    emu = await emulators()
    channel, probe, sid = await channels(emu)
    await emu.drop(sid)
    assert await probe.wait_closed() == "The connection to AWS Session Manager was lost."
    assert emu.violations == []


async def test_resume_that_keeps_failing_gives_up(emulators, channels):
    emu = await emulators()
    calls = []

    async def resume():
        calls.append(1)
        raise RuntimeError("ResumeSession failed: ThrottlingException")

    channel, probe, sid = await channels(emu, resume=resume, max_reconnects=3, reconnect_delay=0.01)
    await emu.drop(sid)
    reason = await probe.wait_closed()
    assert "could not be resumed" in reason and "ThrottlingException" in reason
    assert len(calls) == 3
    assert emu.violations == []


async def test_resume_with_an_empty_token_means_timed_out(emulators, channels):
    emu = await emulators()

    async def resume():
        return "", ""

    channel, probe, sid = await channels(emu, resume=resume, reconnect_delay=0.01)
    await emu.drop(sid)
    assert "timed out" in await probe.wait_closed()
    assert emu.violations == []


async def test_input_that_is_never_acked_gives_up_after_the_resend_bound(emulators, channels):
    emu = await emulators()
    channel, probe, _ = await channels(emu, max_resend_attempts=3, resend_interval=0.05)
    await prompt(probe)
    emu.ignore_input = True
    channel.send_input(b"echo lost\r")
    reason = await probe.wait_closed()
    assert "stopped acknowledging input" in reason
    assert emu.counters.input_resends == 3 and channel.resends == 3
    assert emu.violations == []


async def test_pending_input_is_bounded(emulators, channels):
    emu = await emulators(ignore_input=False)
    channel, probe, _ = await channels(emu, max_pending_input=4096)
    await prompt(probe)
    emu.ignore_input = True
    assert channel.send_input(b"#" * 3000)
    assert not channel.send_input(b"#" * 2000)  # refused: 5000 > 4096 unacked
    assert channel.send_input(b"#" * 1000)
    assert emu.violations == []


async def test_handshake_deadline(emulators, channels):
    emu = await emulators(handshake="stuck")
    started = time.monotonic()
    with pytest.raises(DataChannelError, match=r"handshake did not complete within 0.5 s.*did not complete"):
        await channels(emu, handshake_timeout=0.5)
    assert time.monotonic() - started < 2
    assert emu.violations == []


async def test_agent_that_says_nothing_hits_the_handshake_deadline(emulators, channels):
    emu = await emulators(open_mode="silent")
    with pytest.raises(DataChannelError, match="handshake did not complete within 0.3 s: the SSM agent sent neither"):
        await channels(emu, handshake_timeout=0.3)
    assert emu.violations == []


async def test_refused_connection_fails_fast():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    probe = Probe()
    channel = DataChannel(
        f"ws://127.0.0.1:{port}/v1/data-channel/s-1?role=publish_subscribe",
        "secret-token",
        session_id="s-1",
        target="i-0123456789abcdef0",
        on_output=probe.on_output,
        on_closed=probe.on_closed,
    )
    started = time.monotonic()
    with pytest.raises(DataChannelError, match="Could not connect to the Session Manager data channel") as error:
        await channel.open()
    assert time.monotonic() - started < 2
    assert "secret-token" not in str(error.value)
    assert probe.closed == []


async def test_stream_that_never_answers_times_out(emulators, channels):
    emu = await emulators(open_mode="stall")
    started = time.monotonic()
    with pytest.raises(DataChannelError, match="did not open within 0.4 s"):
        await channels(emu, connect_timeout=0.4)
    assert time.monotonic() - started < 2
    assert emu.violations == []


async def test_stream_refused_by_the_service(emulators, channels):
    emu = await emulators(open_mode="refuse")
    with pytest.raises(DataChannelError, match="refused the data channel \\(HTTP 403\\)"):
        await channels(emu)
    assert emu.violations == []


async def test_non_shell_session_type_is_refused(emulators, channels):
    emu = await emulators(handshake=True, session_type="Port")
    with pytest.raises(DataChannelError, match="'Port' session, which is not a terminal"):
        await channels(emu)
    await until(lambda: emu.counters.handshake_responses, what="the handshake response")
    assert emu.counters.handshake_responses[0][0].status == ActionStatus.FAILED
    assert emu.violations == []


async def test_kms_requested_without_generate_data_key(emulators, channels):
    emu = await emulators(handshake=True, kms_key_id=KMS_KEY, kms_decrypt=lambda blob, context: b"")
    with pytest.raises(DataChannelError, match="Session Manager preferences require KMS encryption") as error:
        await channels(emu)
    assert KMS_KEY in str(error.value) and "not configured" in str(error.value)
    await until(lambda: emu.counters.handshake_responses, what="the handshake response")
    statuses = [(p.action_type, p.status) for p in emu.counters.handshake_responses[0]]
    assert statuses == [("SessionType", ActionStatus.SUCCESS), ("KMSEncryption", ActionStatus.FAILED)]
    assert emu.violations == []


@pytest.fixture
def kms(monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield boto3.client("kms", region_name="eu-west-1")


@pytest.mark.parametrize("challenge_ack", [False, True])
async def test_kms_encrypted_session(emulators, channels, kms, challenge_ack):
    key_id = kms.create_key(Description="Session Manager")["KeyMetadata"]["Arn"]
    contexts = []

    async def generate_data_key(key: str, context: dict) -> tuple[bytes, bytes]:
        contexts.append(context)
        response = await asyncio.to_thread(kms.generate_data_key, KeyId=key, NumberOfBytes=64, EncryptionContext=context)
        return response["Plaintext"], response["CiphertextBlob"]

    def decrypt(blob: bytes, context: dict) -> bytes:
        return kms.decrypt(CiphertextBlob=blob, EncryptionContext=context)["Plaintext"]

    emu = await emulators(handshake=True, kms_key_id=key_id, kms_decrypt=decrypt)
    channel, probe, sid = await channels(emu, generate_data_key=generate_data_key, kms_challenge_ack=challenge_ack)
    assert channel.encrypted
    assert "encrypted using AWS KMS" in channel.customer_message
    assert emu.counters.challenges_verified == 1
    expected_context = {"aws:ssm:SessionId": sid, "aws:ssm:TargetId": emu.target}
    assert {k: v for k, v in contexts[0].items() if k != "aws:ssm:RandomChallenge"} == expected_context
    assert ("aws:ssm:RandomChallenge" in contexts[0]) is challenge_ack
    await prompt(probe)
    channel.resize(101, 33)
    await run(channel, probe, "stty size; echo sec''ret", "33 101\r\nsecret\r\n")
    assert emu.violations == []  # incl. every input payload decrypting with the client's key


async def test_token_never_reaches_a_log_or_an_error(emulators, channels, caplog):
    caplog.set_level(logging.DEBUG)
    emu = await emulators()

    async def resume():
        return emu.resume_session(sid)

    channel, probe, sid = channels.build(emu, resume=resume)
    await channel.open()
    await prompt(probe)
    await emu.drop(sid)
    await until(lambda: channel.reconnects == 1, what="the reconnect")
    await run(channel, probe, "echo st''ill-here", "still-here\r\n")
    stuck = await emulators(handshake="stuck")
    failing, _, _ = channels.build(stuck, handshake_timeout=0.3)
    with pytest.raises(DataChannelError) as error:
        await failing.open()
    tokens = emu.issued_tokens + stuck.issued_tokens
    assert len(tokens) == 3 and all(tokens)
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert "data channel resumed" in logged  # the capture did see our records
    for token in tokens:
        assert token not in logged
        assert token not in str(error.value)
    assert emu.violations == [] and stuck.violations == []


async def test_close_is_idempotent_and_stops_every_task(emulators, channels):
    emu = await emulators()
    channel, probe, _ = await channels(emu)
    await prompt(probe)
    await channel.close()
    await channel.close()
    assert channel.closed and probe.closed == []  # close() is ours: no on_closed
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("ssm-")]
    assert not channel.send_input(b"x")
    with pytest.raises(DataChannelError, match="already opened"):
        await channel.open()
    assert emu.violations == []


async def test_threaded_emulator_for_sync_users():
    with run_in_thread() as threaded:
        sid, url, token = threaded.start_session()
        probe = Probe()
        channel = DataChannel(url, token, session_id=sid, target=threaded.emulator.target, on_output=probe.on_output, on_closed=probe.on_closed)
        await channel.open()
        try:
            await prompt(probe)
            await run(channel, probe, "echo thre''aded", "threaded\r\n")
        finally:
            await channel.close()
        assert threaded.emulator.violations == []


# --- engine details without a network ------------------------------------------------------------


def _output(seq: int, data: bytes) -> frames.ClientMessage:
    return frames.ClientMessage(MessageType.OUTPUT_STREAM_DATA, seq, data, PayloadType.OUTPUT)


async def test_reorder_buffer_is_bounded_and_drains_in_order():
    probe = Probe()
    channel = DataChannel("ws://unused", "t", session_id="s", target="i-1", on_output=probe.on_output, on_closed=probe.on_closed, reorder_capacity=2)
    for seq in (3, 2, 1):  # 1 does not fit: dropped unacked, the agent will resend it
        await channel._on_stream_message(_output(seq, b"%d" % seq))
    assert probe.output == b"" and sorted(channel._reorder) == [2, 3]
    await channel._on_stream_message(_output(0, b"0"))
    assert probe.output == b"0"
    await channel._on_stream_message(_output(1, b"1"))
    assert probe.output == b"0123"
    await channel._on_stream_message(_output(2, b"2"))  # a duplicate now
    assert probe.output == b"0123" and channel.duplicates == 1
    await channel.close()


def test_rto_follows_the_spec_and_is_capped():
    channel = DataChannel("ws://unused", "t", session_id="s", target="i-1", on_output=print, on_closed=print)
    assert channel.rto == pytest.approx(0.2)
    channel._update_rto(0.02)
    # RTTVAR = 3/4*0 + 1/4*|0.1-0.02| = 0.02; RTT = 7/8*0.1 + 1/8*0.02 = 0.09; RTO = 0.09 + 4*0.02
    assert channel.rto == pytest.approx(0.17)
    for _ in range(200):
        channel._update_rto(0.001)
    assert channel.rto == pytest.approx(0.001 + 0.01, abs=0.002)  # floor: RTT + 10 ms clock granularity
    channel._update_rto(30.0)
    assert channel.rto == 1.0  # capped at 1 s


# --- the emulator's own strictness (a broken client must be caught) ------------------------------


async def _raw(emu: SsmEmulator, *, token: str | None = None, sid: str | None = None):
    if sid is None:
        sid, url, issued = emu.start_session()
    else:
        url, issued = emu.url_for(sid), emu.sessions[sid].token
    ws = await connect(url, compression=None)
    await ws.send(frames.opening_frame(issued if token is None else token, client_id=str(uuid.uuid4()), client_version="1.2.650.0"))
    return sid, ws


def _input(seq: int, payload: bytes, payload_type: int = PayloadType.OUTPUT, **fields) -> bytes:
    return frames.encode(frames.ClientMessage(MessageType.INPUT_STREAM_DATA, seq, payload, payload_type, **fields))


async def _expect_violation(emu: SsmEmulator, text: str) -> None:
    await until(lambda: any(text in v for v in emu.violations), 3, f"a violation mentioning {text!r}; got {emu.violations}")


async def _after_first_output(ws) -> frames.ClientMessage:
    message = frames.decode(await asyncio.wait_for(ws.recv(), 5))
    assert message.message_type == MessageType.OUTPUT_STREAM_DATA and message.sequence_number == 0
    assert message.flags == frames.FLAG_SYN  # SYN on seq 0 (§2)
    return message


async def test_emulator_rejects_a_wrong_token(emulators):
    emu = await emulators()
    _, ws = await _raw(emu, token="not-the-token")
    await _expect_violation(emu, "wrong or already used token")
    await ws.close()


async def test_emulator_rejects_a_reused_token(emulators):
    emu = await emulators()
    sid, url, token = emu.start_session()
    first = await connect(url, compression=None)
    await first.send(frames.opening_frame(token, client_id=str(uuid.uuid4()), client_version="v"))
    await _after_first_output(first)
    second = await connect(url, compression=None)
    await second.send(frames.opening_frame(token, client_id=str(uuid.uuid4()), client_version="v"))
    await _expect_violation(emu, "wrong or already used token")
    await first.close()
    await second.close()


@pytest.mark.parametrize(
    ("first", "text"),
    [
        (b"\x00\x00\x00\x74", "first frame must be a TEXT frame"),
        ('{"TokenValue":"x"}', "exactly the keys"),
        ("not json", "not JSON"),
    ],
)
async def test_emulator_checks_the_opening_frame(emulators, first, text):
    emu = await emulators()
    _, url, _ = emu.start_session()
    ws = await connect(url, compression=None)
    await ws.send(first)
    await _expect_violation(emu, text)
    await ws.close()


@pytest.mark.parametrize(
    ("frame", "text"),
    [
        ("text", "text frame after the opening frame"),
        (_input(0, b"x")[:100], "shorter than the 120-byte header"),
        (struct.pack(">I", 120) + _input(0, b"x")[4:], "HeaderLength is 120"),
        (_input(0, b"x")[:80] + bytes(32) + _input(0, b"x")[112:], "PayloadDigest"),
        (_input(0, b"x")[:4] + b"input_stream_data".rjust(32, b"\x00") + _input(0, b"x")[36:], "does not re-encode"),
        (_input(1, b"x"), "skips ahead"),
        (_input(0, b"x", flags=1), "flags 1"),
        (frames.encode(frames.ClientMessage(MessageType.CHANNEL_CLOSED, payload=b"{}")), "must not send channel_closed"),
    ],
)
async def test_emulator_checks_every_binary_frame(emulators, frame, text):
    emu = await emulators()
    _, ws = await _raw(emu)
    await _after_first_output(ws)
    await ws.send(frame)
    await _expect_violation(emu, text)
    await ws.close()


async def test_emulator_checks_resends_and_acks(emulators):
    emu = await emulators()
    _, ws = await _raw(emu)
    first = await _after_first_output(ws)
    await ws.send(_input(0, b"true\r"))
    await ws.send(_input(0, b"false\r"))  # same seq, different message
    await _expect_violation(emu, "seq 0 was reused for a different message")
    wrong_id = frames.ClientMessage(MessageType.OUTPUT_STREAM_DATA, 0, message_id=uuid.uuid4())
    await ws.send(frames.encode(frames.build_ack(wrong_id)))
    await _expect_violation(emu, "names id")
    never_sent = frames.ClientMessage(MessageType.OUTPUT_STREAM_DATA, 999)
    await ws.send(frames.encode(frames.build_ack(never_sent)))
    await _expect_violation(emu, "never sent")
    await ws.send(frames.encode(frames.build_ack(first)))  # a correct ack adds nothing
    await ws.close()
    assert len(emu.violations) == 3


async def test_emulator_flags_input_before_the_handshake_completes(emulators):
    emu = await emulators(handshake=True)
    _, ws = await _raw(emu)
    request = await _after_first_output(ws)
    assert request.payload_type == PayloadType.HANDSHAKE_REQUEST
    await ws.send(_input(0, b'{"cols":80,"rows":24}', PayloadType.SIZE))
    await _expect_violation(emu, "before HandshakeComplete")
    await ws.close()
