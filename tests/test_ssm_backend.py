"""The SSM terminal end to end: browser protocol ↔ consumer ↔ SsmBackend ↔ emulator ↔ a real PTY.

AWS's control plane cannot run here: STS AssumeRoleWithWebIdentity goes to moto (through the real
clusters.aws code path, portal-signed token included), StartSession/ResumeSession/TerminateSession to
botocore's Stubber, which checks every request's parameters. The data channel is the real client
against tests/ssm_emulator.py, a strict MGS + agent stand-in that relays to a real login shell run as
the mapped POSIX user (as the agent's Run As does).
"""

import asyncio
import logging
import os

import pytest
from botocore.stub import ANY, Stubber
from channels.db import database_sync_to_async as sync_to_async
from django.conf import settings
from moto import mock_aws

from accounts.issuer import user_subject
from clusters import aws
from clusters.models import Cluster
from terminal import protocol
from terminal.actions import revoke_terminal_sessions
from terminal.backends import ssm as ssm_backend
from terminal.consumers import TerminalConsumer
from terminal.live import LiveSession
from terminal.models import TerminalSession
from tests.ssm_emulator import DEFAULT_TARGET, SsmEmulator
from tests.terminal_client import TerminalClient, settle_sessions, terminal_path

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SSM_SETTINGS = {
    "region": "us-east-1",
    "instance_id": DEFAULT_TARGET,
    "role_arn": "arn:aws:iam::123456789012:role/clusterra-hpc",
    "document_name": "Clusterra-Shell-acme-hpc",
}


class FakeAws:
    """Queues Stubber responses for the ssm client the backend creates for the user."""

    def __init__(self, monkeypatch):
        self.stubbers: list[Stubber] = []
        self.plans: list[list] = [[]]  # per ssm client created, in order (the last one repeats)
        real = aws.account_client

        def account_client(account, service, **kwargs):
            client = real(account, service, **kwargs)  # STS through moto, with the portal's signed token
            if service == "ssm":
                stubber = Stubber(client)
                plan = self.plans[min(len(self.stubbers), len(self.plans) - 1)]
                for step in plan:
                    step(stubber)
                stubber.activate()
                self.stubbers.append(stubber)
            return client

        monkeypatch.setattr(aws, "account_client", account_client)

    def start(self, session_id, url, token):
        self.plan.append(lambda s: s.add_response(
            "start_session", {"SessionId": session_id, "TokenValue": token, "StreamUrl": url},
            {"Target": DEFAULT_TARGET, "DocumentName": SSM_SETTINGS["document_name"], "Reason": ANY},
        ))

    @property
    def plan(self) -> list:
        """Steps (callables taking the Stubber) for the ssm client being planned."""
        return self.plans[-1]

    def next_client(self):
        """What follows is for the next ssm client the backend creates (after fresh credentials)."""
        self.plans.append([])

    def session(self, emulator) -> str:
        """An emulator session that StartSession returns and TerminateSession ends."""
        sid, url, token = emulator.start_session()
        self.start(sid, url, token)
        self.terminate(sid)
        return sid

    def start_error(self, code, message):
        self.plan.append(lambda s: s.add_client_error("start_session", service_error_code=code, service_message=message))

    def terminate(self, session_id):
        self.plan.append(lambda s: s.add_response(
            "terminate_session", {"SessionId": session_id}, {"SessionId": session_id}))

    def resume(self, session_id, url, token):
        self.plan.append(lambda s: s.add_response(
            "resume_session", {"SessionId": session_id, "TokenValue": token, "StreamUrl": url}, {"SessionId": session_id}))

    def assert_done(self):
        for stubber in self.stubbers:
            stubber.assert_no_pending_responses()


@pytest.fixture(autouse=True)
async def _end_live_sessions(transactional_db):
    """Finishing a session writes to the database: end what is live before the database is flushed."""
    yield
    await settle_sessions()


@pytest.fixture
def ssm_cluster(cast, settings):
    settings.TERMINAL_REATTACH_GRACE = 0
    Cluster.objects.filter(pk=cast.hpc.pk).update(backend="ssm", backend_settings=SSM_SETTINGS)
    aws.forget_credentials()
    with mock_aws():
        yield cast
    aws.forget_credentials()


@pytest.fixture
async def emulator(ssm_cluster, transactional_db):
    posix = ssm_cluster.posix.pw_name
    # The agent's Run As: a login shell as the mapped POSIX user (runuser when the tests run as root).
    argv = ["runuser", "-u", posix, "--", "/bin/bash", "--login"] if os.geteuid() == 0 else ["/bin/bash", "--login"]
    async with SsmEmulator(argv) as emu:
        yield emu
        await LiveSession.end_all()
    assert emu.violations == []


@pytest.fixture
def fake_aws(monkeypatch):
    return FakeAws(monkeypatch)


async def open_client(user, **query):
    client = TerminalClient(user, terminal_path(**query))
    assert await client.connect()
    return client


async def last_session(user) -> TerminalSession:
    return await sync_to_async(lambda: TerminalSession.objects.filter(user=user).latest("started_at"))()


async def finished_session(user, timeout: float = 5.0) -> TerminalSession:
    """The user's last session once its row is finished (the exit status goes out just before that)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (row := await last_session(user)).ended_at is None:
        assert loop.time() < deadline, "the session row was not finished"
        await asyncio.sleep(0.02)
    return row


async def test_ssm_terminal_end_to_end(ssm_cluster, emulator, fake_aws, caplog):
    caplog.set_level(logging.DEBUG)
    sid = fake_aws.session(emulator)
    token = emulator.issued_tokens[-1]
    client = await open_client(ssm_cluster.bob, cols=90, rows=33)
    connected = await client.wait_for_status("connected")
    assert connected["backend"] == "ssm"
    await client.send_input(b"echo ssm-$((6*7)); whoami; stty size\r")
    await client.wait_for_output(b"ssm-42")
    await client.wait_for_output(ssm_cluster.posix.pw_name.encode())
    await client.wait_for_output(b"33 90")
    await client.send_raw(protocol.encode_resize(120, 40))
    await client.send_input(b"stty size\r")
    await client.wait_for_output(b"40 120")
    await client.send_input(b"exit\r")
    status = await client.wait_for_status("exit")
    assert status == {"type": "exit", "reason": "closed", "message": "The shell exited."}
    await LiveSession.end_all()
    row = await last_session(ssm_cluster.bob)
    assert row.backend == "ssm" and row.backend_session_id == sid and row.bytes_out > 0
    fake_aws.assert_done()  # StartSession and TerminateSession, with the expected parameters
    assert token not in caplog.text and "TokenValue" not in caplog.text
    assert "eyJ" not in caplog.text  # no JWT (the portal-signed web-identity token) either


async def test_handshake_and_customer_message_reach_the_user(ssm_cluster, emulator, fake_aws):
    emulator.handshake = True
    emulator.customer_message = "Welcome to the Acme head node"
    fake_aws.session(emulator)
    client = await open_client(ssm_cluster.bob)
    await client.wait_for_status("connected")
    notice = await client.wait_for_status("notice")
    assert notice["message"] == "Welcome to the Acme head node"
    await client.send_input(b"echo after-handshake\r")
    await client.wait_for_output(b"after-handshake\r\n")


async def test_revocation_terminates_the_aws_session(ssm_cluster, emulator, fake_aws):
    fake_aws.session(emulator)
    client = await open_client(ssm_cluster.bob)
    await client.wait_for_status("connected")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await sync_to_async(revoke_terminal_sessions)(actor=ssm_cluster.alice, user=ssm_cluster.bob, message="Offboarded.")
    status = await client.wait_for_status("exit")
    assert status["reason"] == "revoked" and loop.time() - started < 1.0
    await LiveSession.end_all()
    fake_aws.assert_done()
    subject = user_subject(ssm_cluster.bob, ssm_cluster.acme)
    assert not [key for key in aws._cache if key[1] == subject]  # the user's STS credentials are forgotten


async def test_channel_closed_reason_is_shown(ssm_cluster, emulator, fake_aws):
    sid = fake_aws.session(emulator)
    client = await open_client(ssm_cluster.bob)
    await client.wait_for_status("connected")
    await emulator.close_channel(sid, "Session terminated due to idle timeout.")
    status = await client.wait_for_status("exit")
    assert status["message"] == "Session Manager closed the session: Session terminated due to idle timeout."


async def test_dropped_stream_is_resumed_with_a_new_token(ssm_cluster, emulator, fake_aws):
    sid, url, token = emulator.start_session()
    resumed_token = "resumed-" + os.urandom(16).hex()
    fake_aws.start(sid, url, token)
    fake_aws.resume(sid, url, resumed_token)
    fake_aws.terminate(sid)
    client = await open_client(ssm_cluster.bob)
    await client.wait_for_status("connected")
    await client.send_input(b"export KEEP=resumed-$((1+1))\r")
    await client.drain(0.3)
    await emulator.drop(sid)
    emulator.sessions[sid].token = resumed_token  # what ResumeSession handed out; the old token is dead
    await client.send_input(b"echo $KEEP\r")
    await client.wait_for_output(b"resumed-2\r\n", timeout=15)
    await LiveSession.end_all()
    fake_aws.assert_done()


@pytest.mark.parametrize("code, message, expected", [
    ("TargetNotConnected", "i-0123456789abcdef0 is not connected.", "not connected"),
    ("InvalidDocument", "Document Clusterra-Shell-acme-hpc does not exist", "document"),
    ("ThrottlingException", "Rate exceeded", "throttl"),
    ("AccessDeniedException", "User is not authorized to perform: ssm:StartSession", "denied"),
    ("ExpiredTokenException", "The security token included in the request is expired", "expired"),
])
async def test_start_session_failures_name_the_cause(ssm_cluster, emulator, fake_aws, code, message, expected, caplog):
    fake_aws.start_error(code, message)
    client = await open_client(ssm_cluster.bob)
    status = await client.wait_for_status("exit")
    assert status["reason"] == "backend_error"
    assert expected in status["message"].lower(), status["message"]
    row = await finished_session(ssm_cluster.bob)
    assert row.end_reason == "backend_error"


async def test_stream_that_never_opens_ends_with_a_message_and_terminates(ssm_cluster, emulator, fake_aws, monkeypatch):
    emulator.open_mode = "silent"  # accepts the opening frame, then says nothing
    monkeypatch.setattr(ssm_backend.SsmBackend, "channel_options", {"handshake_timeout": 0.5})
    fake_aws.session(emulator)
    client = await open_client(ssm_cluster.bob)
    status = await client.wait_for_status("exit", timeout=10)
    assert status["reason"] == "backend_error" and "handshake" in status["message"].lower()
    await finished_session(ssm_cluster.bob)
    fake_aws.assert_done()


async def test_ssm_session_reattaches(ssm_cluster, emulator, fake_aws, settings):
    settings.TERMINAL_REATTACH_GRACE = 30
    fake_aws.session(emulator)
    first = await open_client(ssm_cluster.bob)
    connected = await first.wait_for_status("connected")
    await first.send_input(b"echo before-$((2*3))\r")
    await first.wait_for_output(b"before-6\r\n")
    await first.close()
    await asyncio.sleep(0.3)
    second = await open_client(ssm_cluster.bob, attach=connected["session_id"])
    assert (await second.wait_for_status("connected"))["reattached"] is True
    await second.wait_for_output(b"before-6")
    await second.send_input(b"echo after-reattach\r")
    await second.wait_for_output(b"after-reattach\r\n")


async def test_bad_cluster_settings_end_the_attempt_with_the_key_named(ssm_cluster, transactional_db):
    await sync_to_async(lambda: Cluster.objects.filter(pk=ssm_cluster.hpc.pk).update(backend_settings={"region": "us-east-1"}))()
    client = await open_client(ssm_cluster.bob)
    status = await client.wait_for_status("exit")
    assert status["reason"] == "backend_error" and "instance_id" in status["message"]
    assert (await finished_session(ssm_cluster.bob)).end_reason == "backend_error"


async def test_resume_of_a_session_aws_no_longer_has_ends_it_with_the_cause(ssm_cluster, emulator, fake_aws):
    sid, url, token = emulator.start_session()
    fake_aws.start(sid, url, token)
    fake_aws.plan.append(lambda s: s.add_client_error(
        "resume_session", service_error_code="DoesNotExistException", service_message=f"Session {sid} does not exist"))
    fake_aws.terminate(sid)
    client = await open_client(ssm_cluster.bob)
    await client.wait_for_status("connected")
    await emulator.drop(sid)
    status = await client.wait_for_status("exit", timeout=15)
    assert status["reason"] == "backend_error" and "no longer exists" in status["message"], status
    await LiveSession.end_all()
    fake_aws.assert_done()  # one ResumeSession only: a permanent error is not retried


async def test_kms_encrypted_session_works_end_to_end(ssm_cluster, emulator, fake_aws):
    import boto3

    kms = boto3.client("kms", region_name="us-east-1")
    key_id = kms.create_key(Description="session manager")["KeyMetadata"]["KeyId"]
    emulator.handshake = True
    emulator.kms_key_id = key_id
    emulator.kms_decrypt = lambda blob, context: kms.decrypt(CiphertextBlob=blob, EncryptionContext=context)["Plaintext"]
    fake_aws.session(emulator)
    client = await open_client(ssm_cluster.bob)
    await client.wait_for_status("connected")
    await client.send_input(b"echo sealed-$((3*3))\r")
    await client.wait_for_output(b"sealed-9\r\n")
    live = next(iter(LiveSession.registry.values()))
    assert live.backend._channel.encrypted


async def test_credentials_revoked_at_aws_are_replaced_once(ssm_cluster, emulator, fake_aws):
    fake_aws.start_error("ExpiredTokenException", "The security token included in the request is expired")
    fake_aws.next_client()
    fake_aws.session(emulator)
    client = await open_client(ssm_cluster.bob)
    await client.wait_for_status("connected")
    await client.send_input(b"echo fresh-credentials\r")
    await client.wait_for_output(b"fresh-credentials\r\n")
    await LiveSession.end_all()
    assert len(fake_aws.stubbers) == 2  # the first client's credentials were forgotten, a new one was made
    fake_aws.assert_done()


async def test_output_a_stalled_browser_cannot_take_is_bounded_and_the_loss_is_shown(ssm_cluster, emulator, fake_aws):
    """Session Manager has no window: past the ack window the backend holds at most MAX_HELD_OUTPUT."""
    fake_aws.session(emulator)
    client = await open_client(ssm_cluster.bob)
    await client.wait_for_status("connected")
    client.ack = False  # a browser that stops acknowledging
    await client.send_input(b"head -c 6000000 /dev/zero | tr '\\0' y; echo; echo __DO''NE__\r")
    live = next(iter(LiveSession.registry.values()))
    peak = 0
    for _ in range(40):  # the emulator sends ~9 MB/s: 4 s is plenty for 6 MB
        await client.drain(0.1)
        peak = max(peak, len(live.backend._held))
    assert peak <= ssm_backend.MAX_HELD_OUTPUT
    assert len(client.output) <= settings.TERMINAL_HIGH_WATERMARK + 4096
    client.ack = True
    consumer = next(c for c in TerminalConsumer.live if c.live_session is live)
    await client.send_ack(consumer._unacked)
    output = await client.wait_for_output(b"__DONE__\r\n", timeout=15)
    assert b"bytes of output were dropped while the browser was not reading]" in output


async def test_an_ssm_session_of_a_lost_portal_process_is_terminated_at_aws(ssm_cluster, fake_aws):
    """The reaper (terminal/processes.py) ends an SSM session whose daphne died: TerminateSession as its user."""
    import uuid
    from datetime import timedelta

    from django.utils import timezone

    from terminal.actions import open_terminal_session
    from terminal.models import PortalProcess
    from terminal.processes import reap_lost_processes

    def orphan():
        lost = PortalProcess.objects.create(id=uuid.uuid4(), worker="9", hostname="gone", pid=1,
                                            lease_until=timezone.now() - timedelta(seconds=1))
        session = open_terminal_session(user=ssm_cluster.bob, tenant_slug="acme", cluster_slug="hpc", working_directory=None,
                                        client_address=None, user_agent="pytest", owner_id=lost.pk)
        TerminalSession.objects.filter(pk=session.pk).update(backend_session_id="bob-0123456789abcdef0")
        return session

    session = await sync_to_async(orphan)()
    fake_aws.terminate("bob-0123456789abcdef0")
    assert await sync_to_async(reap_lost_processes)() == 1
    assert len(fake_aws.stubbers) == 1  # an ssm client as bob was made, and its TerminateSession was called
    fake_aws.assert_done()
    row = await sync_to_async(TerminalSession.objects.get)(pk=session.pk)
    assert row.backend == "ssm" and row.end_reason == "worker_lost"
