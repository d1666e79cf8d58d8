"""Reattach: a live session outlives its browser socket for a grace period (real PTYs, no mocks)."""

import asyncio

import pytest
from channels.db import database_sync_to_async as sync_to_async

from audit.models import AuditEvent
from terminal import protocol
from terminal.actions import revoke_terminal_sessions
from terminal.backends.local_pty import session_pids
from terminal.live import LiveSession
from terminal.models import TerminalSession
from tests.terminal_client import TerminalClient, settle_sessions, terminal_path

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(autouse=True)
async def _grace(settings, transactional_db):
    settings.TERMINAL_REATTACH_GRACE = 60
    settings.TERMINAL_SCROLLBACK_BYTES = 64 * 1024
    yield
    await settle_sessions()


async def open_client(user, **query) -> tuple[TerminalClient, dict]:
    client = TerminalClient(user, terminal_path(**query))
    assert await client.connect()
    return client, await client.wait_for_status("connected")


async def session_row(session_id) -> TerminalSession:
    return await sync_to_async(TerminalSession.objects.get)(pk=session_id)


async def test_dropped_socket_reattaches_to_the_same_shell_with_scrollback(cast):
    first, connected = await open_client(cast.bob)
    session_id = connected["session_id"]
    assert connected["reattach_grace"] == 60
    await first.send_input(b"cd /tmp && export MARK=kept-$((40+2)); echo before-drop\n")
    await first.wait_for_output(b"before-drop\r\n")
    await first.close()  # the network dropped
    await asyncio.sleep(0.2)
    row = await session_row(session_id)
    assert row.ended_at is None and session_pids(int(row.backend_session_id))

    second, status = await open_client(cast.bob, attach=session_id, cols=100, rows=30)
    assert status["reattached"] is True and status["session_id"] == session_id
    await second.wait_for_output(b"before-drop")  # the scrollback is replayed first
    assert second.output.startswith(first.output[:40])  # all of it: nothing was trimmed yet, so nothing is cut
    await second.send_input(b"echo $MARK $PWD; stty size\n")
    await second.wait_for_output(b"kept-42 /tmp")  # the same shell: its variables and directory
    await second.wait_for_output(b"30 100")  # and the new window's size
    await second.send_input(b"exit\n")
    assert (await second.wait_for_status("exit"))["reason"] == "closed"
    await LiveSession.end_all()
    row = await session_row(session_id)
    assert row.end_reason == "closed" and row.bytes_in > 0
    actions = await sync_to_async(lambda: list(AuditEvent.objects.filter(target_id=session_id).values_list("action", flat=True)))()
    assert "terminal.session.reattach" in actions


async def test_session_ends_when_the_browser_does_not_come_back(cast, settings):
    settings.TERMINAL_REATTACH_GRACE = 1
    client, connected = await open_client(cast.bob)
    await client.send_input(b"sleep 1000 & echo st''arted\n")
    await client.wait_for_output(b"started\r\n")
    row = await session_row(connected["session_id"])
    sid = int(row.backend_session_id)
    await client.close()
    await asyncio.sleep(0.5)
    assert (await session_row(row.pk)).ended_at is None  # still within the grace period
    for _ in range(40):
        row = await session_row(row.pk)
        if row.ended_at is not None:
            break
        await asyncio.sleep(0.1)
    assert row.end_reason == "closed" and row.end_message == "The browser did not come back within 1 second."
    assert session_pids(sid) == []
    late, status = TerminalClient(cast.bob, terminal_path(attach=str(row.pk))), None
    assert await late.connect()
    status = await late.wait_for_status("exit")
    assert status["reason"] == "refused" and await late.wait_closed() == protocol.CLOSE_NOT_FOUND


async def test_second_window_takes_the_session_over(cast):
    first, connected = await open_client(cast.bob)
    second, status = await open_client(cast.bob, attach=connected["session_id"])
    assert status["reattached"] is True
    detached = await first.wait_for_status("detached")
    assert "another window" in detached["message"]
    assert await first.wait_closed() == protocol.CLOSE_TAKEN_OVER
    await second.send_input(b"echo only-here\n")
    await second.wait_for_output(b"only-here\r\n")
    assert b"only-here" not in first.output
    actions = await sync_to_async(lambda: list(
        AuditEvent.objects.filter(target_id=connected["session_id"]).order_by("id").values_list("action", flat=True)))()
    assert actions == ["terminal.session.start", "terminal.session.takeover"]


@pytest.mark.parametrize("who", ["alice", "charlie"])
async def test_only_the_owner_can_reattach(cast, who):
    owner, connected = await open_client(cast.bob)
    intruder = TerminalClient(getattr(cast, who), terminal_path(attach=connected["session_id"]))
    assert await intruder.connect()
    assert (await intruder.wait_for_status("exit"))["message"] == "That terminal session has ended."
    assert await intruder.wait_closed() == protocol.CLOSE_NOT_FOUND
    await owner.send_input(b"echo still-mine\n")
    await owner.wait_for_output(b"still-mine\r\n")


async def test_reattach_needs_a_live_session_id(cast):
    for bad in ("not-a-uuid", "00000000-0000-0000-0000-000000000000"):
        client = TerminalClient(cast.bob, terminal_path(attach=bad))
        assert await client.connect()
        assert await client.wait_closed() == protocol.CLOSE_NOT_FOUND


async def test_reattach_on_another_cluster_path_is_refused(cast):
    owner, connected = await open_client(cast.bob)
    client = TerminalClient(cast.bob, terminal_path(cluster="elsewhere", attach=connected["session_id"]))
    assert await client.connect()
    assert await client.wait_closed() == protocol.CLOSE_NOT_FOUND


async def test_terminate_ends_the_session_at_once(cast):
    client, connected = await open_client(cast.bob)
    await client.send_raw(protocol.encode_terminate())
    status = await client.wait_for_status("exit")
    assert status["reason"] == "closed" and status["message"] == "Ended by the user."
    await LiveSession.end_all()
    assert (await session_row(connected["session_id"])).end_reason == "closed"


async def test_detached_output_is_bounded_and_the_shell_waits(cast, settings):
    limit = settings.TERMINAL_SCROLLBACK_BYTES
    client, connected = await open_client(cast.bob)
    await client.send_input(b"PS1='__PROMPT__ '; yes scrollback-line\n")
    await client.drain(0.3)
    await client.close()
    live = LiveSession.registry[connected["session_id"]]
    await asyncio.sleep(1.0)
    assert len(live._scrollback) <= limit
    produced = live.bytes_out
    await asyncio.sleep(0.5)
    assert live.bytes_out - produced <= 64 * 1024  # reading stopped: the shell blocks on its terminal
    again, status = await open_client(cast.bob, attach=connected["session_id"])
    await again.wait_for_output(b"scrollback-line\r\n")
    await again.send_input(b"\x03")
    await again.send_input(b"echo back-$((1+1))\n")
    await again.wait_for_output(b"back-2", timeout=15)


async def test_revocation_reaches_a_detached_session(cast):
    client, connected = await open_client(cast.bob)
    await client.close()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await sync_to_async(revoke_terminal_sessions)(actor=cast.alice, user=cast.bob, message="Offboarded.")
    row = None
    while loop.time() - started < 1.0:
        row = await session_row(connected["session_id"])
        if row.ended_at is not None:
            break
        await asyncio.sleep(0.02)
    assert row.end_reason == "revoked" and row.end_message == "Offboarded."


async def test_idle_timeout_keeps_counting_while_detached(cast):
    await sync_to_async(lambda: type(cast.hpc).objects.filter(pk=cast.hpc.pk).update(idle_timeout=1))()
    client, connected = await open_client(cast.bob)
    await client.close()
    await asyncio.sleep(1.5)
    row = await session_row(connected["session_id"])
    assert row.end_reason == "idle"


async def test_output_while_detached_is_replayed_once_and_in_order(cast):
    client, connected = await open_client(cast.bob)
    await client.send_input(b"PS1='$ '; (sleep 0.5; echo late-one; sleep 1.2; echo late-two) &\n")
    await client.drain(0.2)
    await client.close()
    await asyncio.sleep(1.0)  # late-one is printed while nobody is attached
    again, status = await open_client(cast.bob, attach=connected["session_id"])
    await again.wait_for_output(b"late-two\r\n", timeout=5)  # printed after the reattach
    await again.drain(0.3)
    output = bytes(again.output)
    assert output.count(b"late-one\r\n") == 1 and output.count(b"late-two\r\n") == 1  # (the echoed command has "late-one;")
    assert output.index(b"late-one\r\n") < output.index(b"late-two\r\n")
    assert again.statuses[0]["type"] == "connected"  # nothing before the status the client resets on


async def test_the_connected_status_names_the_worker_and_its_prefixed_path_reattaches(cast, settings):
    """Behind nginx a reattach goes to /ws/w/<worker>/...: the route accepts it and reaches the same shell."""
    settings.WORKER_ID = "w7"
    first, connected = await open_client(cast.bob)
    assert connected["worker"] == "w7"
    await first.send_input(b"export MARK=via-$((3*5))\n")
    await first.close()
    path = terminal_path(attach=connected["session_id"]).replace("/ws/t/", "/ws/w/w7/t/", 1)
    second = TerminalClient(cast.bob, path)
    assert await second.connect()
    status = await second.wait_for_status("connected")
    assert status["reattached"] is True and status["session_id"] == connected["session_id"] and status["worker"] == "w7"
    await second.send_input(b"echo mark=$MARK\n")
    await second.wait_for_output(b"mark=via-15")
    await second.send_input(b"exit\n")
    assert (await second.wait_for_status("exit"))["reason"] == "closed"
