"""A real terminal session, found again by what was typed in it (issue 11 §7) — the shape of Teleport's
integration test `testAuditOn`: open a real interactive session, type, end it, wait for its log to be
stored, then find the session through the search and its events through the audit trail."""

import pytest
from channels.db import database_sync_to_async as sync_to_async

from audit.models import AuditEvent
from audit.search import SessionFilter, search
from terminal.live import LiveSession
from terminal.models import SessionLog, TerminalSession
from terminal.tasks import sweep_session_logs
from tests.conftest import wait_for
from tests.terminal_client import TerminalClient, settle_sessions, terminal_path

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(autouse=True)
async def _settle(transactional_db):
    yield
    await settle_sessions()


async def test_typed_command_is_found_with_person_cluster_time_and_events(cast):
    client = TerminalClient(cast.bob, terminal_path())
    assert await client.connect()
    connected = await client.wait_for_status("connected")
    session_id = connected["session_id"]
    await client.wait_for_output(b"$ ")  # the prompt: type as a person does (typed-ahead text has no prompt)
    await client.send_input(b"echo hi; ls /tmp\n")
    await client.wait_for_output(b"\rhi\r\n")  # after the echoed line (and bash ending bracketed paste)
    await client.send_input(b"exit\n")
    assert (await client.wait_for_status("exit"))["reason"] == "closed"
    await LiveSession.end_all()

    def stored_and_indexed():
        sweep_session_logs()  # what the beat task does every few seconds
        log = SessionLog.objects.filter(session_id=session_id, kind="asciicast").first()
        return log if log is not None and log.state == "stored" and log.index_state == "indexed" else None

    await sync_to_async(wait_for)(stored_and_indexed, 30, "the recording stored and indexed")
    session = await sync_to_async(TerminalSession.objects.select_related("user", "cluster").get)(pk=session_id)

    page = await sync_to_async(search)("echo hi", SessionFilter(tenant_id=cast.acme.pk, user_id=cast.bob.pk))
    hits = [h for h in page.hits if str(h.session_id) == session_id]
    assert hits, page
    commands = [h for h in hits if h.kind == "command"]
    assert commands, hits
    command = commands[0]
    assert "echo hi; ls /tmp" in command.text and "\x1b" not in command.text
    assert command.spans and command.text[command.spans[0][0]:command.spans[0][1]].lower() == "echo hi"
    elapsed = (session.ended_at - session.started_at).total_seconds()
    assert command.offset is not None and 0 <= command.offset <= elapsed
    assert (session.user, session.cluster.slug) == (cast.bob, "hpc")
    # Another member and another tenant find nothing of it; the tenant's admin (no person filter) does.
    for filters, found in ((SessionFilter(tenant_id=cast.acme.pk, user_id=cast.alice.pk), False),
                           (SessionFilter(tenant_id=cast.other.pk), False),
                           (SessionFilter(tenant_id=cast.acme.pk), True)):
        page = await sync_to_async(search)("echo hi", filters)
        assert any(str(h.session_id) == session_id for h in page.hits) is found, filters

    def events():
        return list(AuditEvent.objects.filter(target_id=session_id).order_by("sequence").values_list(
            "action", "actor_id", "sequence", "created_at"))

    trail = await sync_to_async(events)()
    actions = [a for a, *_ in trail]
    assert actions[0] == "terminal.session.start" and "terminal.session.end" in actions
    assert actions.index("terminal.session.start") < actions.index("terminal.session.end")
    assert all(actor == cast.bob.pk and sequence is not None and created for _a, actor, sequence, created in trail)
