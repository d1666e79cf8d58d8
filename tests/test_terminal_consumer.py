"""The terminal relay over a real PTY and a real login shell (no mocks)."""

import asyncio
import json
import os
import pwd
from pathlib import Path

import pytest
from channels.db import database_sync_to_async as sync_to_async
from django.conf import settings
from django.utils import timezone

from clusters.models import Cluster
from clusters.services import map_account
from terminal import protocol
from terminal.actions import revoke_terminal_sessions
from terminal.backends.local_pty import session_pids
from terminal.consumers import TerminalConsumer
from terminal.models import TerminalSession
from terminal.recordings import open_recording
from tests.terminal_client import TerminalClient, settle_sessions, terminal_path

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(autouse=True)
async def _no_reattach(settings, transactional_db):
    """Here a closed socket ends its session at once; tests/test_terminal_reattach.py covers the grace period.

    Ends what is still live (finishing a session writes to the database) before the database is flushed."""
    settings.TERMINAL_REATTACH_GRACE = 0
    yield
    await settle_sessions()


async def open_session(user, **query) -> TerminalClient:
    client = TerminalClient(user, terminal_path(**query))
    assert await client.connect()
    await client.wait_for_status("connected")
    return client


async def last_session(user) -> TerminalSession:
    return await sync_to_async(lambda: TerminalSession.objects.filter(user=user).latest("started_at"))()


async def set_cluster(cluster: Cluster, **fields):
    await sync_to_async(lambda: Cluster.objects.filter(pk=cluster.pk).update(**fields))()


async def test_echo_round_trip_runs_as_the_mapped_user(cast):
    client = await open_session(cast.bob)
    await client.send_input(b"echo round-$((6*7))-trip; whoami; echo HOME=$HOME\n")
    await client.wait_for_output(b"round-42-trip")
    output = await client.wait_for_output(f"HOME={cast.posix.pw_dir}".encode())
    assert cast.posix.pw_name.encode() in output
    await client.send_input(b"exit\n")
    status = await client.wait_for_status("exit")
    assert status["reason"] == "closed" and status["exit_code"] == 0
    assert await client.wait_closed() == protocol.CLOSE_NORMAL
    session = await last_session(cast.bob)
    assert session.end_reason == "closed" and session.ended_at is not None
    assert session.bytes_out > 0 and session.bytes_in > 0
    assert session.posix_username == cast.posix.pw_name and session.backend_session_id


async def test_clean_environment(cast):
    client = await open_session(cast.bob)
    await client.send_input(b"env | sort | sed 's/^/ENV:/'; echo __DONE__\n")
    output = (await client.wait_for_output(b"\n__DONE__")).decode()
    names = {line.split("=", 1)[0][4:] for line in output.splitlines() if line.startswith("ENV:") and "=" in line}
    assert {"TERM", "LANG", "HOME", "USER", "SHELL", "PATH"} <= names
    # Nothing of the portal's own environment leaks into the user's shell.
    assert "DJANGO_SETTINGS_MODULE" not in names and "CLUSTERRA_DATA_DIR" not in names
    await client.close()


async def test_resize_is_visible_in_stty(cast):
    client = await open_session(cast.bob, cols=100, rows=30)
    await client.send_input(b"stty size\n")
    await client.wait_for_output(b"30 100")
    await client.send_raw(protocol.encode_resize(132, 43))
    await client.send_input(b"stty size\n")
    await client.wait_for_output(b"43 132")
    await client.close()


async def test_working_directory(cast, tmp_path):
    workdir = Path(cast.posix.pw_dir) / f"project dir {tmp_path.name}"
    workdir.mkdir()
    os.chown(workdir, cast.posix.pw_uid, -1)
    try:
        client = await open_session(cast.bob, cwd=str(workdir))
        await client.send_input(b"pwd\n")
        await client.wait_for_output(f"\r{workdir}\r\n".encode())  # the line after the echoed command
        await client.close()
    finally:
        workdir.rmdir()


async def test_working_directory_the_user_may_not_enter(cast):
    assert os.geteuid() == 0, "needs a directory the test user cannot enter"
    client = TerminalClient(cast.bob, terminal_path(cwd="/root"))
    assert await client.connect()
    status = await client.wait_for_status("exit")
    assert status["reason"] == "backend_error"
    assert "Cannot enter the working directory /root" in status["message"]
    assert await client.wait_closed() == protocol.CLOSE_BACKEND_ERROR


@pytest.mark.parametrize("cwd", ["relative/path", "/home/../etc", "/tmp//x"])
async def test_bad_working_directory_is_refused(cast, cwd):
    client = TerminalClient(cast.bob, terminal_path(cwd=cwd))
    assert await client.connect()
    status = await client.wait_for_status("exit")
    assert status["reason"] == "refused" and "working directory" in status["message"]
    assert await client.wait_closed() == protocol.CLOSE_FORBIDDEN


async def test_idle_timeout_warns_then_ends(cast):
    await set_cluster(cast.hpc, idle_timeout=2)
    client = await open_session(cast.bob)
    warning = await client.wait_for_status("warning", timeout=5)
    assert warning["reason"] == "idle"
    status = await client.wait_for_status("exit", timeout=5)
    assert status["reason"] == "idle"
    assert await client.wait_closed() == protocol.CLOSE_NORMAL
    session = await last_session(cast.bob)
    assert session.end_reason == "idle"
    assert session_pids(int(session.backend_session_id)) == []


async def test_typing_keeps_an_idle_session_open(cast):
    await set_cluster(cast.hpc, idle_timeout=2)
    client = await open_session(cast.bob)
    for i in range(4):  # 4 × 0.8 s = 3.2 s, longer than the idle timeout
        await client.send_input(f"echo ti''ck{i}\n".encode())
        await client.wait_for_output(f"tick{i}\r\n".encode())
        await asyncio.sleep(0.8)
    assert not any(s["type"] == "exit" for s in client.statuses)
    await client.close()


async def test_max_duration_ends_even_an_active_session(cast):
    await set_cluster(cast.hpc, max_session_duration=2)
    client = await open_session(cast.bob)
    for _ in range(10):
        if any(s["type"] == "exit" for s in client.statuses) or client.close_code:
            break
        await client.send_input(b"echo busy\n")
        await client.drain(0.4)
    status = await client.wait_for_status("exit", timeout=5)
    assert status["reason"] == "max_duration"
    assert any(s["type"] == "warning" and s["reason"] == "max_duration" for s in client.statuses)
    assert (await last_session(cast.bob)).end_reason == "max_duration"


async def test_revocation_closes_all_sessions_of_the_user_within_a_second(cast):
    first = await open_session(cast.bob)
    second = await open_session(cast.bob)
    other = await open_session(cast.alice)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await sync_to_async(revoke_terminal_sessions)(actor=cast.alice, user=cast.bob, message="Offboarded.")
    for client in (first, second):
        status = await client.wait_for_status("exit", timeout=1)
        assert status == {"type": "exit", "reason": "revoked", "message": "Offboarded."}
    assert loop.time() - started < 1.0
    sessions = await sync_to_async(list)(TerminalSession.objects.filter(user=cast.bob))
    assert [s.end_reason for s in sessions] == ["revoked", "revoked"]
    # Another user's session is untouched.
    await other.send_input(b"echo still''-here\n")
    await other.wait_for_output(b"still-here\r\n")
    await other.close()


async def test_revoking_one_session(cast):
    keep = await open_session(cast.bob)
    end = await open_session(cast.bob)
    target = await last_session(cast.bob)
    await sync_to_async(revoke_terminal_sessions)(actor=cast.alice, session=target)
    assert (await end.wait_for_status("exit", timeout=1))["reason"] == "revoked"
    await keep.send_input(b"echo al''ive\n")
    await keep.wait_for_output(b"alive\r\n")
    await keep.close()


async def test_bad_origin_is_refused_at_the_handshake(cast):
    for origin in (b"http://evil.example", b"http://127.0.0.1:9999", None):
        client = TerminalClient(cast.bob, terminal_path(), origin=origin)
        assert not await client.connect()
    assert await sync_to_async(TerminalSession.objects.count)() == 0


async def test_trusted_origin_is_accepted(cast, settings):
    settings.TRUSTED_ORIGINS = ["https://portal.example.org"]
    client = TerminalClient(cast.bob, terminal_path(), origin=b"https://portal.example.org")
    assert await client.connect()
    await client.wait_for_status("connected")
    await client.close()


async def test_anonymous_is_refused(cast):
    from django.contrib.auth.models import AnonymousUser

    client = TerminalClient(AnonymousUser(), terminal_path())
    assert await client.connect()
    status = await client.wait_for_status("exit")
    assert status["reason"] == "refused"
    assert await client.wait_closed() == protocol.CLOSE_UNAUTHENTICATED


async def test_another_tenants_cluster_is_not_found(cast):
    client = TerminalClient(cast.charlie, terminal_path(tenant="acme", cluster="hpc"))
    assert await client.connect()
    assert (await client.wait_for_status("exit"))["message"] == "No such cluster."
    assert await client.wait_closed() == protocol.CLOSE_NOT_FOUND
    # Same slug in charlie's own tenant works.
    own = await open_session(cast.charlie, tenant="other", cluster="hpc")
    await own.close()


async def test_revoked_account_is_refused(cast):
    client = TerminalClient(cast.rita, terminal_path())
    assert await client.connect()
    status = await client.wait_for_status("exit")
    assert "revoked account" in status["message"]
    assert await client.wait_closed() == protocol.CLOSE_FORBIDDEN


async def test_mapping_to_a_system_uid_is_refused(cast):
    daemon = pwd.getpwnam("daemon")
    await sync_to_async(map_account)(cluster=cast.hpc, user=cast.bob, posix_username="daemon", uid=daemon.pw_uid)
    client = TerminalClient(cast.bob, terminal_path())
    assert await client.connect()
    status = await client.wait_for_status("exit")
    assert status["reason"] == "refused" and "system account" in status["message"]
    assert await client.wait_closed() == protocol.CLOSE_FORBIDDEN


async def test_mapping_that_lies_about_the_uid_is_refused(cast):
    # The database says uid 5000, the head node says daemon is uid 1: the head node wins.
    await sync_to_async(map_account)(cluster=cast.hpc, user=cast.bob, posix_username="daemon", uid=5000)
    client = TerminalClient(cast.bob, terminal_path())
    assert await client.connect()
    status = await client.wait_for_status("exit")
    assert status["reason"] == "backend_error" and f"below the minimum of {settings.TERMINAL_MIN_UID}" in status["message"]
    assert await client.wait_closed() == protocol.CLOSE_FORBIDDEN


async def test_shell_that_cannot_start_ends_with_backend_error(cast):
    await sync_to_async(map_account)(cluster=cast.hpc, user=cast.bob, posix_username="no-such-user-x", uid=4242)
    client = TerminalClient(cast.bob, terminal_path())
    assert await client.connect()
    status = await client.wait_for_status("exit")
    assert status["reason"] == "backend_error" and "does not exist" in status["message"]
    assert await client.wait_closed() == protocol.CLOSE_BACKEND_ERROR
    assert (await last_session(cast.bob)).end_reason == "backend_error"


@pytest.mark.parametrize(
    "frame, code",
    [
        (b"\x07hello", protocol.CLOSE_BAD_FRAME),
        (b"\x02\x00\x50", protocol.CLOSE_BAD_FRAME),  # RESIZE too short
        (protocol.encode_resize(0, 24), protocol.CLOSE_BAD_FRAME),
        (protocol.encode_ack(10**6), protocol.CLOSE_BAD_FRAME),  # more than was ever sent
        (b"\x01" + b"x" * (64 * 1024 + 1), protocol.CLOSE_TOO_LARGE),
        (b"", protocol.CLOSE_BAD_FRAME),
    ],
)
async def test_malformed_frames_close_the_socket_with_a_reason(cast, frame, code):
    client = await open_session(cast.bob)
    await client.comm.send_input({"type": "websocket.receive", "bytes": frame})
    assert await client.wait_closed() == code
    status = await client.wait_for_status("exit")
    assert status["message"].startswith("Protocol error:")
    assert client.close_reason.startswith("Protocol error:")
    session = await last_session(cast.bob)
    assert session.ended_at is not None and session_pids(int(session.backend_session_id)) == []


async def test_text_frames_are_refused(cast):
    client = await open_session(cast.bob)
    await client.comm.send_to(text_data="hello")
    assert await client.wait_closed() == protocol.CLOSE_BAD_FRAME


async def test_flow_control_bounds_server_memory_and_ctrl_c_still_works(cast):
    high = settings.TERMINAL_HIGH_WATERMARK
    client = await open_session(cast.bob)
    await client.send_input(b"PS1='__PROMPT__ '; yes\n")
    client.ack = False  # a browser that stops acknowledging
    consumer = next(c for c in TerminalConsumer.live if c.session and c.session.user_id == cast.bob.pk)
    peak = 0
    for _ in range(20):  # 2 s of `yes` with a stalled client
        await client.drain(0.1)
        peak = max(peak, consumer.outstanding)
    assert peak <= high
    received_while_stalled = len(client.output)
    assert received_while_stalled <= high + 4096  # the prompt bytes sent before ack was switched off
    await client.drain(0.5)
    assert len(client.output) == received_while_stalled, "the server kept sending without acks"

    # Ctrl-C reaches the shell although output is blocked; the prompt comes back once the client acks.
    client.output.clear()
    await client.send_input(b"\x03")
    await client.send_ack(consumer._unacked)
    client.ack = True
    await client.wait_for_output(b"__PROMPT__ ", timeout=5)
    await client.send_input(b"echo after''-yes\n")
    await client.wait_for_output(b"after-yes\r\n")
    await client.close()


async def test_no_process_outlives_its_session(cast):
    client = await open_session(cast.bob)
    await client.send_input(b"sleep 1000 & sleep 1001 & (trap '' HUP; sleep 1002) & echo st''arted\n")
    await client.wait_for_output(b"started\r\n")
    session = await last_session(cast.bob)
    sid = int(session.backend_session_id)
    assert len(session_pids(sid)) >= 4
    await client.close()
    await asyncio.sleep(0)  # let the consumer's end run to completion
    for _ in range(50):
        if not session_pids(sid):
            break
        await asyncio.sleep(0.05)
    assert session_pids(sid) == []
    assert (await last_session(cast.bob)).end_reason == "closed"


async def test_server_shutdown_finishes_the_session(cast):
    client = await open_session(cast.bob)
    session = await last_session(cast.bob)
    client.comm.future.cancel()  # what daphne does to every application when it stops
    with pytest.raises(asyncio.CancelledError):
        await client.comm.future
    session = await last_session(cast.bob)
    assert session.end_reason == "server_shutdown"
    assert session_pids(int(session.backend_session_id)) == []


async def test_session_is_recorded_as_asciicast_v2(cast):
    client = await open_session(cast.bob, cols=90, rows=20)
    await client.send_input(b"echo recorded-$((2+2))\n")
    await client.wait_for_output(b"recorded-4\r\n")
    await client.send_raw(protocol.encode_resize(100, 30))
    await client.send_input(b"exit\n")
    await client.wait_closed()
    session = await last_session(cast.bob)
    with await sync_to_async(open_recording)(session) as recording:  # from the spool until the store has it
        lines = recording.read().decode().splitlines()
    header = json.loads(lines[0])
    assert header["version"] == 2 and header["width"] == 90 and header["height"] == 20 and header["timestamp"] > 0
    events = [json.loads(line) for line in lines[1:]]
    assert all(isinstance(e[0], float | int) and e[1] in ("o", "r") for e in events)
    assert "recorded-4" in "".join(e[2] for e in events if e[1] == "o")
    assert ["r", "100x30"] in [e[1:] for e in events]
    times = [e[0] for e in events]
    assert times == sorted(times)


async def test_input_the_shell_does_not_read_is_bounded(cast):
    client = await open_session(cast.bob)
    await client.send_input(b"stty -icanon -echo; echo rea''dy; sleep 30\n")
    await client.wait_for_output(b"ready\r\n")
    chunk = b"y" * 32 * 1024
    for _ in range(40):  # 1.25 MiB into a terminal nobody reads
        await client.send_input(chunk)
    notice = await client.wait_for_status("notice", timeout=5)
    assert "dropped" in notice["message"]
    client.output.clear()
    await client.send_input(b"\x03")  # interrupts `sleep` although the input queue is full
    await client.wait_for_output(b"$ ", timeout=5)
    await client.send_input(b"\x03")  # the shell got the unread y's as a command line: discard it
    await client.send_input(b"stty sane; echo after''wards\n")
    await client.wait_for_output(b"afterwards\r\n")
    await client.close()


async def test_a_revocation_whose_message_was_lost_still_ends_the_session(cast):
    """The channel-layer message is only the fast path: the owning process reads marked rows every second."""
    from prometheus_client import REGISTRY

    def sample(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    ends_before = sample("clusterra_terminal_session_ends_total", backend="local", reason="revoked")
    client = await open_session(cast.bob)
    assert sample("clusterra_terminal_sessions_live", backend="local") >= 1
    session = await last_session(cast.bob)
    # What revoke_terminal_sessions writes first; the message that would follow is never sent.
    await sync_to_async(lambda: TerminalSession.objects.filter(pk=session.pk).update(
        revoke_requested_at=timezone.now(), revoke_message="Revoked while the channel layer was down."))()
    status = await client.wait_for_status("exit", timeout=10)
    assert status["reason"] == "revoked" and status["message"] == "Revoked while the channel layer was down."
    session = await last_session(cast.bob)
    assert session.end_reason == "revoked"
    assert sample("clusterra_terminal_session_ends_total", backend="local", reason="revoked") == ends_before + 1


async def test_revoked_aws_credentials_are_forgotten_by_every_process_loop(cast):
    """Each portal process's loop drops cached STS credentials of subjects revoked anywhere (here: by a row)."""
    from datetime import timedelta

    from clusters import aws
    from clusters.models import CredentialRevocation
    from terminal.processes import lease

    subject = f"tenant-{cast.acme.pk}-user-{cast.bob.pk}"
    creds = aws.Credentials(access_key="AKIA", secret_key="s", session_token="t",
                            expiration=timezone.now() + timedelta(hours=1))
    with aws._cache_lock:
        aws._cache[("arn:aws:iam::123456789012:role/x", subject, "bob")] = creds
    await lease.ensure_running()
    await sync_to_async(CredentialRevocation.objects.update_or_create)(subject=subject, defaults={"revoked_at": timezone.now()})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while any(key[1] == subject for key in aws._cache):
        assert loop.time() < deadline, "the process loop did not forget the revoked credentials"
        await asyncio.sleep(0.05)
