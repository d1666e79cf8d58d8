"""AWS SSM Session Manager backend: a shell on an EC2 head node with no SSH and no open port.

StartSession is called with the user's own credentials (STS AssumeRoleWithWebIdentity with a token
the portal signs, clusters/aws.py), so CloudTrail and SSM show the person and Run As maps the session
to their POSIX account (the SSMSessionRunAs session tag). From StartSession on, the data channel
(terminal/ssm/channel.py) runs here on the server, independent of the browser socket; the session
ends with TerminateSession on every way out (exit, idle, max duration, revocation, shutdown).

Session Manager has no flow control (docs/ssm-data-channel.md): output the relay cannot take yet is
held here, bounded; beyond the bound the oldest held output is dropped and the user is told.
"""

import asyncio
import logging
import shlex

from botocore.exceptions import BotoCoreError, ClientError
from channels.db import database_sync_to_async

from clusters import aws
from terminal.backends.base import BackendError, SessionBackend, ShellRequest
from terminal.ssm.channel import DataChannel, DataChannelError

logger = logging.getLogger(__name__)

MAX_HELD_OUTPUT = 4 * 1024 * 1024
AWS_CALL_TIMEOUT = 30.0
TERMINATE_TIMEOUT = 10.0


async def _account_client(account, service: str, **kwargs):
    """The user's client (minting a token reads the signing key; STS is a network call): off the event
    loop, in a worker thread of its own so a slow STS does not hold up other database work."""
    try:
        return await asyncio.wait_for(
            database_sync_to_async(aws.account_client, thread_sensitive=False)(account, service, **kwargs), AWS_CALL_TIMEOUT)
    except TimeoutError:
        raise aws.AwsError(f"AWS STS did not hand out credentials within {AWS_CALL_TIMEOUT:g} s.") from None


class AwsCallError(BackendError):
    """An AWS call failed; the message names the cause (clusters.aws.describe_client_error)."""

    def __init__(self, error: aws.AwsError):
        super().__init__(str(error))
        self.aws_error = error


class SsmBackend(SessionBackend):
    name = "ssm"
    # Knobs for tests and the benchmark (the emulator's timings); production uses the defaults.
    channel_options: dict = {}

    def __init__(self, **callbacks):
        super().__init__(**callbacks)
        self._ssm = None
        self._account = None
        self._settings: aws.SsmSettings | None = None
        self._channel: DataChannel | None = None
        self._held = bytearray()
        self._dropped = 0
        self._terminated = False
        self._exited = False
        self._remote_terminated = False
        self.customer_message = ""

    # --- AWS calls (blocking botocore in a worker thread, with an overall timeout) ---------------
    async def _call(self, action: str, fn, **params):
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, **params), AWS_CALL_TIMEOUT)
        except TimeoutError:
            raise BackendError(f"AWS {action} did not answer within {AWS_CALL_TIMEOUT:g} s.") from None
        except (ClientError, BotoCoreError) as exc:
            error = aws.describe_client_error(exc, action)
            logger.warning("SSM %s for %s failed: %s (%s)", action, self._account, error.code, error.detail or error)
            raise AwsCallError(error) from None
        except aws.AwsError as exc:
            raise AwsCallError(exc) from None

    async def _start_session(self, request: ShellRequest) -> dict:
        settings = self._settings
        params = dict(Target=settings.instance_id, DocumentName=settings.document_name,
                      Reason=f"Clusterra terminal {request.session_id} for {request.posix_username}"[:256])
        try:
            return await self._call("StartSession", self._ssm.start_session, **params)
        except AwsCallError as exc:
            if not exc.aws_error.credentials_invalid:
                raise
        # The cached credentials were revoked or expired early at AWS: fetch new ones, once.
        aws.forget_credentials(aws.account_subject(self._account))
        try:
            self._ssm = await _account_client(self._account, "ssm", id_token=request.id_token)
        except aws.AwsError as exc:
            raise BackendError(str(exc)) from None
        return await self._call("StartSession", self._ssm.start_session, **params)

    async def start(self, request: ShellRequest) -> None:
        account = request.account
        self._account = account
        try:
            self._settings = aws.ssm_settings(account.cluster)
        except aws.AwsError as exc:
            raise BackendError(str(exc)) from None
        settings = self._settings
        try:
            self._ssm = await _account_client(account, "ssm", id_token=request.id_token)
        except aws.AwsError as exc:
            raise BackendError(str(exc)) from None
        response = await self._start_session(request)
        self.session_id = response["SessionId"]
        self.shell = f"ssm:{settings.document_name}"
        logger.info("SSM session %s started on %s for %s", self.session_id, settings.instance_id, request.posix_username)
        self._channel = DataChannel(
            response["StreamUrl"], response["TokenValue"], session_id=self.session_id, target=settings.instance_id,
            on_output=self._on_channel_output, on_closed=self._on_channel_closed, resume=self._resume,
            generate_data_key=self._generate_data_key, **self.channel_options,
        )
        try:
            await self._channel.open()
        except DataChannelError as exc:
            await self._terminate_remote()
            raise BackendError(str(exc)) from None
        except BaseException:
            await self._terminate_remote()
            raise
        self.customer_message = self._channel.customer_message
        self._channel.resize(request.cols, request.rows)
        if request.working_directory:
            # Session Manager has no working-directory parameter: change directory as the first command
            # (a leading space keeps it out of bash's history under HISTCONTROL=ignorespace/ignoreboth).
            self._channel.send_input(f" cd -- {shlex.quote(request.working_directory)}\r".encode())

    async def _resume(self) -> tuple[str, str]:
        try:
            response = await self._call("ResumeSession", self._ssm.resume_session, SessionId=self.session_id)
        except AwsCallError as exc:
            # The channel retries a BackendError (throttling, a network blip); DataChannelError stops it.
            if exc.aws_error.retryable:
                raise
            raise DataChannelError(str(exc)) from None
        if not response.get("TokenValue"):  # DataChannelError: stop retrying
            raise DataChannelError("The session timed out on the AWS side and can no longer be resumed.")
        return response["StreamUrl"], response["TokenValue"]

    async def _generate_data_key(self, key_id: str, context: dict) -> tuple[bytes, bytes]:
        try:
            kms = await _account_client(self._account, "kms")
        except aws.AwsError as exc:
            raise BackendError(str(exc)) from None
        response = await self._call(
            "kms:GenerateDataKey", kms.generate_data_key, KeyId=key_id, NumberOfBytes=64, EncryptionContext=context,
        )
        return response["Plaintext"], response["CiphertextBlob"]

    # --- output: no window on the AWS side, so hold what the relay cannot take yet --------------
    def _on_channel_output(self, data: bytes) -> None:
        if not self._held and not self._dropped and self.read_budget() >= len(data):
            self.on_output(data)  # the usual case: straight through, no copy
            return
        self._held += data
        overflow = len(self._held) - MAX_HELD_OUTPUT
        if overflow > 0:
            del self._held[:overflow]
            self._dropped += overflow
        self._deliver()

    def _deliver(self) -> None:
        budget = self.read_budget()
        if not self._held or budget <= 0:
            return
        if self._dropped:
            note = f"\r\n[clusterra: {self._dropped} bytes of output were dropped while the browser was not reading]\r\n"
            self._dropped = 0
            self.on_output(note.encode())
            budget -= len(note)
        chunk = bytes(self._held[: max(budget, 0)])
        del self._held[: len(chunk)]
        if chunk:
            self.on_output(chunk)

    def resume_reading(self) -> None:
        self._deliver()

    # --- input ----------------------------------------------------------------------------------
    def write(self, data: bytes) -> bool:
        if self._channel is None or self._terminated:
            return False
        return self._channel.send_input(data)

    def resize(self, cols: int, rows: int) -> None:
        if self._channel is not None and not self._terminated:
            self._channel.resize(cols, rows)

    # --- end ------------------------------------------------------------------------------------
    def _on_channel_closed(self, reason: str) -> None:
        if self._terminated or self._exited:
            return
        self._exited = True
        self._deliver()
        if not self._channel.closed_by_service:
            self.on_exit(None, reason)  # the channel failed (lost and not resumable, agent errors)
        elif self._channel.closed_output:
            self.on_exit(None, None, message=f"Session Manager closed the session: {self._channel.closed_output}")
        else:
            self.on_exit(None, None, message="The shell exited.")

    async def _terminate_remote(self) -> None:
        if self._ssm is None or not self.session_id or self._remote_terminated:
            return
        self._remote_terminated = True
        try:
            await asyncio.wait_for(
                asyncio.to_thread(self._ssm.terminate_session, SessionId=self.session_id), TERMINATE_TIMEOUT)
            logger.info("SSM session %s terminated", self.session_id)
        except (TimeoutError, ClientError, BotoCoreError) as exc:
            # The session stays until AWS's own idle timeout; the data channel is closed either way.
            logger.warning("SSM session %s: TerminateSession failed: %s", self.session_id, type(exc).__name__)

    async def terminate(self) -> None:
        if self._terminated:
            return
        self._terminated = True
        if self._channel is not None:
            await self._channel.close()
        await self._terminate_remote()
