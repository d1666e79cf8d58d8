"""Executors: run one command as a given POSIX user on a cluster's head node.

Every Slurm command the portal runs goes through here, as an argv list (never a shell string), with
a timeout and captured output. The local executor runs on this machine (runuser as root, sudo -n
otherwise); the SSM executor runs the same argv on an EC2 head node through AWS SendCommand
(AWS-RunShellScript, every word quoted, `runuser -u USER --` after checking the account there).
"""

import base64
import json
import logging
import math
import os
import re
import shlex
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.core.exceptions import ValidationError

from clusterra.durations import duration_words
from clusters import aws
from clusters.models import Cluster, ClusterAccount, posix_username_validator
from clusters.posix import PosixAccountError, become_user_argv, check_posix_account, clean_environment
from clusters.spawn import CaptureTimeout, OutputTooLarge, run_captured
from clusters.streaming import OutputStream

logger = logging.getLogger(__name__)

MAX_OUTPUT_BYTES = 64 * 1024 * 1024  # squeue of a 20k-job queue is a few MB
# Where runuser/sudo/env are found; the user's own PATH is set inside `env -i`.
_SPAWN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ExecutorError(Exception):
    """The command could not be run at all (no such user, timeout, executor down); fit for the user.

    retryable: the same command may work later (AWS throttled or unreachable, head node offline, timeout).
    """

    retryable = False

    def __init__(self, *args, retryable: bool | None = None):
        super().__init__(*args)
        if retryable is not None:
            self.retryable = retryable


class CommandTooLarge(ExecutorError):
    """The command (with its input) is larger than the executor can carry; the caller's fault, not the cluster's."""


class CommandTimeout(ExecutorError):
    retryable = True


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def error_text(self) -> str:
        """The command's own complaint (Slurm prints `sbatch: error: ...` on stderr)."""
        text = self.stderr.decode("utf-8", "replace").strip() or self.stdout.decode("utf-8", "replace").strip()
        return text or f"{self.argv[0]} exited with status {self.returncode}"


class Executor:
    def run(self, account: ClusterAccount, argv: list[str], *, stdin: bytes | None = None, timeout: float = 30,
            env: dict[str, str] | None = None) -> CommandResult:
        raise NotImplementedError


class LocalExecutor(Executor):
    """Runs the command on this machine as the account's POSIX user."""

    def _full_argv(self, account, argv, env) -> list[str]:
        if not argv or not all(isinstance(a, str) and "\x00" not in a for a in argv):
            raise ValueError("argv must be a non-empty list of strings without NUL bytes")
        try:
            entry = check_posix_account(account.posix_username, account.uid)
        except PosixAccountError as exc:
            raise ExecutorError(str(exc)) from None
        # `env -C /`: the command starts in / (posix_spawn keeps the portal's own directory).
        return [*become_user_argv(entry), "env", "-i", "-C", "/", *clean_environment(entry, **(env or {})), *argv]

    def run(self, account, argv, *, stdin=None, timeout=30, env=None) -> CommandResult:
        """`stdin` may also be a readable binary file (an upload): it is fed in chunks, never read whole."""
        full = self._full_argv(account, argv, env)
        started = time.monotonic()
        try:
            result = run_captured(full, env={"PATH": _SPAWN_PATH}, stdin=stdin, timeout=timeout, max_output=MAX_OUTPUT_BYTES)
        except OSError as exc:
            raise ExecutorError(f"Could not run {argv[0]}: {exc.strerror}.") from None
        except CaptureTimeout:
            raise CommandTimeout(f"{argv[0]} did not finish within {duration_words(timeout)}.") from None
        except OutputTooLarge:
            raise ExecutorError(f"{argv[0]} printed more than {MAX_OUTPUT_BYTES // 2**20} MiB.") from None
        return CommandResult(tuple(argv), result.returncode, result.stdout, result.stderr, time.monotonic() - started)

    def stream(self, account, argv, *, timeout: float, idle_timeout: float, env=None) -> OutputStream:
        """Start argv as the user and hand back its stdout as a stream (downloads; clusters/streaming.py)."""
        try:
            return OutputStream(self._full_argv(account, argv, env), env={"PATH": _SPAWN_PATH}, timeout=timeout,
                                idle_timeout=idle_timeout)
        except OSError as exc:
            raise ExecutorError(f"Could not run {argv[0]}: {exc.strerror}.") from None


# --- AWS SSM (SendCommand) ----------------------------------------------------------------------
SSM_DOCUMENT = "AWS-RunShellScript"

# GetCommandInvocation returns only the first 24,000 characters of stdout and 8,000 of stderr
# (StandardOutputContent / StandardErrorContent: botocore's SSM model, max 24000 / 8000, and the API
# reference: "The first 24,000 characters written by the plugin to stdout"; the SSM agent's
# iohandler.DefaultOutputConfig has MaxStdoutLength 24000 / MaxStderrLength 8000 and marks a cut
# with a suffix). The agent counts bytes, AWS documents characters: anything that comes near either
# limit, or ends with a cut marker, may be truncated, and the whole stream is then read from S3.
SSM_STDOUT_LIMIT = 24_000
SSM_STDERR_LIMIT = 8_000
_TRUNCATION_MARKS = ("--output truncated--", "---Output truncated---", "---Error truncated----")
_NEAR_LIMIT = 64

# SendCommand's Parameters have no size in the API reference or botocore's model. The nearest
# documented bound is the 64 KB size of an SSM document (MaxDocumentSizeExceeded, "The size limit of
# a document is 64 KB", which SendCommand may return). We refuse, before calling AWS, any command
# whose JSON-encoded Parameters exceed 60 KiB, leaving room for AWS-RunShellScript's own body.
# Not verified against live AWS: if AWS draws the line lower, SendCommand's own error is reported.
SSM_PARAMETERS_MAX_BYTES = 60 * 1024
SSM_MAX_EXECUTION_TIMEOUT = 172_800  # AWS-RunShellScript's executionTimeout allowedPattern: 1..172800 s
SSM_MIN_DELIVERY_TIMEOUT, SSM_MAX_DELIVERY_TIMEOUT = 30, 2_592_000  # SendCommand TimeoutSeconds range
SSM_COMMENT_MAX = 100

# Exit codes of the script's own checks on the instance (the command itself has not run then); the
# script also prints a marker line on stderr so that a command exiting 201/202 is not mistaken for them.
EXIT_NO_SUCH_USER = 201
EXIT_UID_MISMATCH = 202
_MARK = "clusterra-ssm:"
_INSTANCE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_WAITING = {"Pending", "InProgress", "Delayed", "Cancelling"}
_UNDELIVERED = {"Pending", "Delayed"}


def _check_argv(argv) -> list[str]:
    if isinstance(argv, (str, bytes)) or not argv or not all(isinstance(a, str) and "\x00" not in a for a in argv):
        raise ValueError("argv must be a non-empty list of strings without NUL bytes")
    return list(argv)


def ssm_script(username: str, uid: int, argv: list[str], *, stdin: bytes | None = None,
               env: dict[str, str] | None = None) -> str:
    """The POSIX sh script SendCommand runs as root on the head node.

    It checks that `username` exists there with exactly `uid` (exit 201 / 202 and a marker line
    otherwise), then runs argv as that user with `runuser -u USER -- env -i` and the same variables
    as clusters.posix.clean_environment (HOME and SHELL from the instance's passwd entry). Every
    argv word, env value and the user name are shell-quoted; stdin travels base64-encoded, and so
    do all words when one holds "{{" (which SSM would take for a parameter reference).
    """
    argv = _check_argv(argv)
    if "=" in argv[0]:
        raise ValueError("argv[0] must not contain '=' (env would take it for a variable)")
    extra = dict(env or {})
    for name, value in extra.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name) or not isinstance(value, str) or "\x00" in value:
            raise ValueError(f"invalid environment variable {name!r}")
    q = shlex.quote
    # env -i operands: the base variables (caller's value wins, as in clean_environment), then the rest.
    literal = {"LANG": settings.TERMINAL_LANG, "PATH": settings.TERMINAL_PATH}
    variable = {"HOME": '"HOME=$home"', "USER": '"USER=$u"', "LOGNAME": '"LOGNAME=$u"', "SHELL": '"SHELL=$shell"'}
    items = []  # (text, is_literal)
    for key in ("LANG", "HOME", "USER", "LOGNAME", "SHELL", "PATH"):
        if key in extra:
            items.append((f"{key}={extra.pop(key)}", True))
        elif key in literal:
            items.append((f"{key}={literal[key]}", True))
        else:
            items.append((variable[key], False))
    items += [(f"{k}={v}", True) for k, v in extra.items()] + [(a, True) for a in argv]
    prepare = []
    if not any("{{" in text for text, is_literal in items if is_literal):
        words = " ".join(q(text) if is_literal else text for text, is_literal in items)
    else:
        # SSM resolves {{ssm:name}} references inside SendCommand parameters, quoted or not: words
        # that could hold one travel base64-encoded and are decoded into "$@" on the instance (the
        # leading w keeps empty words, the trailing x their trailing newlines through $(...)).
        words = " ".join(text for text, is_literal in items if not is_literal) + ' "$@"'
        encoded = " ".join("w" + base64.b64encode(text.encode()).decode("ascii") for text, is_literal in items if is_literal)
        prepare = [
            "set --",
            f"for w in {encoded}; do",
            "  a=$(printf '%s\\n' \"${w#w}\" | base64 -d && printf x) || exit 1",
            '  set -- "$@" "${a%x}"',
            "done",
        ]
    run = f'runuser -u "$u" -- env -i {words}'
    if stdin is None:
        run = f"exec {run} </dev/null"
    else:
        run = f"printf '%s\\n' {q(base64.b64encode(stdin).decode('ascii'))} | base64 -d | {run}"
    script = "\n".join([
        "# Clusterra: run one command as a mapped POSIX user",
        "set -u",
        f'PATH="${{PATH:+$PATH:}}{_INSTANCE_PATH}"; export PATH',
        f"u={q(username)}",
        'if ! actual=$(id -u -- "$u" 2>/dev/null); then',
        f"  printf '%s\\n' {q(f'{_MARK} no-such-user')} >&2; exit {EXIT_NO_SUCH_USER}",
        "fi",
        f'if [ "$actual" != {q(str(int(uid)))} ]; then',
        f"  printf '%s %s\\n' {q(f'{_MARK} uid-mismatch')} \"$actual\" >&2; exit {EXIT_UID_MISMATCH}",
        "fi",
        'entry=$(getent passwd "$u") || entry=',
        "home=$(printf '%s\\n' \"$entry\" | cut -d: -f6); shell=$(printf '%s\\n' \"$entry\" | cut -d: -f7)",
        'home=${home:-/}; shell=${shell:-/bin/sh}',
        "cd / || exit 1",
        *prepare,
        run,
        "",
    ])
    if "{{" in script:  # cannot happen (the user name is validated, the rest is quoted or encoded); never send it
        raise ValueError("the script would contain an SSM parameter reference")
    return script


def _possibly_truncated(text: str, limit: int) -> bool:
    return (text.rstrip().endswith(_TRUNCATION_MARKS) or len(text) >= limit
            or len(text.encode("utf-8", "replace")) >= limit - _NEAR_LIMIT)


class SsmExecutor(Executor):
    """Runs the command on the cluster's SSM-managed head node through SendCommand.

    Credentials are the caller's own (clusters.aws.account_client) or the poller's (poller_client);
    nothing is sent for root or a uid below CLUSTERRA_TERMINAL_MIN_UID, and the instance checks the
    account again before runuser. `sleep`/`clock` and the poll delays are injectable for tests.
    """

    def __init__(self, cluster: Cluster, *, first_delay: float = 0.1, max_delay: float = 1.0,
                 missing_grace: float = 10.0, sleep=None, clock=None):
        self.cluster = cluster
        self.first_delay, self.max_delay, self.missing_grace = first_delay, max_delay, missing_grace
        self.sleep, self.clock = sleep or time.sleep, clock or time.monotonic

    # -- AWS plumbing --------------------------------------------------------------------------
    def _settings(self):
        try:
            return aws.ssm_settings(self.cluster)
        except aws.AwsError as exc:
            raise ExecutorError(str(exc)) from None

    def _client(self, account, service: str):
        try:
            if isinstance(account, ClusterAccount):
                return aws.account_client(account, service)
            return aws.poller_client(self.cluster, account.posix_username, service)
        except aws.AwsError as exc:
            raise ExecutorError(str(exc), retryable=exc.retryable) from None
        except (ClientError, BotoCoreError) as exc:
            raise self._aws_error(exc, "AssumeRoleWithWebIdentity") from None

    def _forget_credentials(self, account) -> None:
        """The cached credentials were refused (expired or revoked early): drop them so the next client is fresh."""
        aws.forget_credentials(aws.account_subject(account) if isinstance(account, ClusterAccount)
                               else aws.poller_subject(self.cluster))

    @staticmethod
    def _aws_error(exc, action: str) -> ExecutorError:
        """A botocore failure (ClientError or BotoCoreError) as an ExecutorError whose message names the cause."""
        error = aws.describe_client_error(exc, action)
        return ExecutorError(str(error), retryable=error.retryable)

    # -- the command ---------------------------------------------------------------------------
    def run(self, account, argv, *, stdin=None, timeout=30, env=None) -> CommandResult:
        argv = _check_argv(argv)
        username, uid = account.posix_username, account.uid
        try:
            posix_username_validator(username)
        except ValidationError:
            raise ExecutorError(f"The POSIX user name {username!r} is not valid.") from None
        if uid is None or uid == 0 or uid < settings.TERMINAL_MIN_UID:
            raise ExecutorError(
                f"The POSIX user {username!r} has uid {uid}, below the minimum of {settings.TERMINAL_MIN_UID}: "
                "the portal never acts as a system account."
            )
        script = ssm_script(username, uid, argv, stdin=stdin, env=env)
        what = f"its input ({len(stdin) / 1024:.0f} KiB)" if stdin else "its arguments"
        return self.send_script(account, script, argv=argv, username=username, timeout=timeout, size_hint=what, uid=uid)

    def send_script(self, account, script: str, *, argv: list[str], username: str, timeout: float,
                    size_hint: str = "its arguments", uid: int | None = None, comment: str | None = None) -> CommandResult:
        """Send `script` (AWS-RunShellScript runs it as root on the head node) and wait for its result.

        `account` chooses the credentials (`_client`); argv[0] and username name the command in errors,
        logs and the SendCommand Comment (or `comment`). With `uid`, the exit codes of ssm_script's own
        account checks are reported as refusals. Also used by clusters/provisioning.py.
        """
        cfg = self._settings()
        execution_timeout = min(max(1, math.ceil(timeout)), SSM_MAX_EXECUTION_TIMEOUT)
        parameters = {"commands": [script], "executionTimeout": [str(execution_timeout)]}
        size = len(json.dumps(parameters).encode())
        if size > SSM_PARAMETERS_MAX_BYTES:
            raise CommandTooLarge(
                f"{argv[0]} cannot be sent through AWS SSM: with {size_hint} the command is {size / 1024:.0f} KiB, and SSM "
                f"SendCommand takes at most {SSM_PARAMETERS_MAX_BYTES // 1024} KiB. Use a script file on the cluster instead."
            )
        request = {
            "InstanceIds": [cfg.instance_id],
            "DocumentName": SSM_DOCUMENT,
            "Parameters": parameters,
            "TimeoutSeconds": min(max(SSM_MIN_DELIVERY_TIMEOUT, math.ceil(timeout)), SSM_MAX_DELIVERY_TIMEOUT),
            "Comment": (comment or self._comment(username, argv[0]))[:SSM_COMMENT_MAX],
            "CloudWatchOutputConfig": {"CloudWatchOutputEnabled": False},
        }
        if cfg.s3_bucket:
            request["OutputS3BucketName"] = cfg.s3_bucket
            if self._prefix(cfg):
                request["OutputS3KeyPrefix"] = self._prefix(cfg)
        started = self.clock()
        for attempt in (1, 2):
            ssm = self._client(account, "ssm")
            try:
                command_id = ssm.send_command(**request)["Command"]["CommandId"]
                break
            except (ClientError, BotoCoreError) as exc:
                error = aws.describe_client_error(exc, "SendCommand")
                if attempt == 1 and error.credentials_invalid:
                    self._forget_credentials(account)  # nothing ran yet: once more with fresh credentials
                    continue
                self._log(username, argv, None, f"refused ({error.code or type(exc).__name__})", started)
                raise ExecutorError(str(error), retryable=error.retryable) from None
        try:
            invocation = self._wait(ssm, cfg, command_id, argv[0], started, timeout)
        except ExecutorError as exc:
            self._log(username, argv, command_id, f"error: {exc}", started)
            raise
        status = invocation.get("Status", "")
        detail = invocation.get("StatusDetails") or status
        self._log(username, argv, command_id, detail, started)
        code = invocation.get("ResponseCode")
        if status == "Success" and code is None:
            code = 0
        if status == "TimedOut" and detail != "DeliveryTimedOut":
            raise CommandTimeout(f"{argv[0]} did not finish within {duration_words(timeout)}.")
        if status not in ("Success", "Failed") or code is None or code < 0:
            # Not delivered, or stopped on the way: the head node (or its agent) is down; trying later may work.
            raise ExecutorError(self._status_message(cfg, argv[0], detail),
                                retryable=detail in ("Undeliverable", "DeliveryTimedOut", "Cancelled", "Terminated"))
        stdout_text = invocation.get("StandardOutputContent") or ""
        stderr_text = invocation.get("StandardErrorContent") or ""
        if uid is not None and code in (EXIT_NO_SUCH_USER, EXIT_UID_MISMATCH) and stderr_text.startswith(_MARK):
            self._refused_on_instance(username, uid, code, stderr_text)
        stdout = self._full_output(account, cfg, command_id, invocation, "stdout", stdout_text, SSM_STDOUT_LIMIT)
        stderr = self._full_output(account, cfg, command_id, invocation, "stderr", stderr_text, SSM_STDERR_LIMIT)
        return CommandResult(tuple(argv), int(code), stdout, stderr, self.clock() - started)

    def _comment(self, username: str, program: str) -> str:
        name = re.sub(r"[^A-Za-z0-9_.+-]", "?", os.path.basename(program))[:40]
        return f"Clusterra {self.cluster.slug}: {name} as {username}"[:SSM_COMMENT_MAX]

    @staticmethod
    def _prefix(cfg) -> str:
        return (cfg.s3_prefix or "").strip("/")

    def _wait(self, ssm, cfg, command_id: str, program: str, started: float, timeout: float) -> dict:
        """Poll GetCommandInvocation (backoff first_delay doubling to max_delay) until a final status."""
        deadline = started + timeout
        delay, last = self.first_delay, "Pending"
        while True:
            remaining = deadline - self.clock()
            if remaining <= 0:
                self._cancel(ssm, command_id, cfg)
                if last in _UNDELIVERED:
                    raise CommandTimeout(
                        f"The head node (instance {cfg.instance_id}) did not pick up {program} within {duration_words(timeout)} "
                        f"(AWS status {last}): is its SSM agent running and online?"
                    )
                raise CommandTimeout(f"{program} did not finish within {duration_words(timeout)}.")
            self.sleep(min(delay, remaining))
            delay = min(delay * 2, self.max_delay)
            try:
                invocation = ssm.get_command_invocation(CommandId=command_id, InstanceId=cfg.instance_id)
            except (ClientError, BotoCoreError) as exc:
                if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") == "InvocationDoesNotExist":
                    if self.clock() - started < self.missing_grace:
                        continue  # SendCommand has not reached GetCommandInvocation yet
                    self._cancel(ssm, command_id, cfg)
                    raise ExecutorError(
                        f"SSM accepted {program} but did not report it on the head node (instance {cfg.instance_id}) "
                        f"within {duration_words(self.missing_grace)} (InvocationDoesNotExist); try again.", retryable=True,
                    ) from None
                self._cancel(ssm, command_id, cfg)
                raise self._aws_error(exc, "GetCommandInvocation") from None
            last = invocation.get("Status", "")
            if last not in _WAITING:
                return invocation

    def _cancel(self, ssm, command_id: str, cfg) -> None:
        try:
            ssm.cancel_command(CommandId=command_id, InstanceIds=[cfg.instance_id])
        except (ClientError, BotoCoreError) as exc:
            logger.warning("ssm cancel_command %s on cluster %s failed: %s", command_id, self.cluster.slug, exc)

    def _status_message(self, cfg, program: str, detail: str) -> str:
        instance = cfg.instance_id
        if detail == "Undeliverable":
            return (f"AWS could not deliver {program} to the head node (instance {instance}): it is stopped, not "
                    "managed by SSM, or its SSM agent is offline (status Undeliverable).")
        if detail == "DeliveryTimedOut":
            return (f"The head node (instance {instance}) did not pick up {program} in time: is its SSM agent running "
                    "and online? (status DeliveryTimedOut)")
        if detail == "InvalidPlatform":
            return f"The head node (instance {instance}) cannot run shell scripts (status InvalidPlatform)."
        if detail == "AccessDenied":
            return f"The head node (instance {instance}) refused {program} (status AccessDenied)."
        if detail in ("Cancelled", "Terminated", "Cancelling"):
            return f"{program} was cancelled on the head node (instance {instance}, status {detail})."
        return f"{program} could not be run on the head node (instance {instance}): AWS reports status {detail or 'unknown'} without an exit code."

    def _refused_on_instance(self, username: str, uid: int, code: int, stderr_text: str):
        if code == EXIT_NO_SUCH_USER:
            raise ExecutorError(f"The POSIX user {username!r} does not exist on the head node.")
        actual = stderr_text.split("uid-mismatch", 1)[-1].strip().split()
        raise ExecutorError(
            f"The POSIX user {username!r} has uid {actual[0] if actual else '?'} on the head node, but the mapping says {uid}."
        )

    def _full_output(self, account, cfg, command_id: str, invocation: dict, stream: str, text: str, limit: int) -> bytes:
        if not _possibly_truncated(text, limit):
            return text.encode("utf-8", "replace")
        if not cfg.s3_bucket:
            raise ExecutorError(
                f"The output of this command on {self.cluster.slug} is longer than AWS SSM returns directly "
                f"({limit:,} characters of {stream}). Configure s3_bucket for the cluster so that long output "
                "can be read from S3."
            )
        return self._read_s3(account, cfg, self._s3_key(cfg, command_id, stream, invocation), stream)

    def _s3_key(self, cfg, command_id: str, stream: str, invocation: dict) -> str:
        """The agent's layout: <prefix>/<command-id>/<instance-id>/awsrunShellScript/0.awsrunShellScript/<stream>;
        the invocation's StandardOutputUrl / StandardErrorUrl, when it names our bucket, wins."""
        url = invocation.get("StandardOutputUrl" if stream == "stdout" else "StandardErrorUrl") or ""
        if url:
            parsed = urlparse(url)
            path = unquote(parsed.path)
            key = None
            if path.startswith(f"/{cfg.s3_bucket}/"):
                key = path[len(cfg.s3_bucket) + 2:]
            elif parsed.netloc.startswith(f"{cfg.s3_bucket}."):
                key = path.lstrip("/")
            if key and key.endswith(f"/{stream}") and command_id in key:
                return key
        parts = [self._prefix(cfg), command_id, cfg.instance_id, "awsrunShellScript", "0.awsrunShellScript", stream]
        return "/".join(p for p in parts if p)

    def _read_s3(self, account, cfg, key: str, stream: str) -> bytes:
        s3 = self._client(account, "s3")
        for attempt in range(3):
            try:
                obj = s3.get_object(Bucket=cfg.s3_bucket, Key=key)
                if obj.get("ContentLength", 0) > MAX_OUTPUT_BYTES:
                    raise ExecutorError(f"The command printed more than {MAX_OUTPUT_BYTES // 2**20} MiB on {stream}.")
                return obj["Body"].read(MAX_OUTPUT_BYTES + 1)[:MAX_OUTPUT_BYTES]
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in ("NoSuchKey", "404") and attempt < 2:
                    self.sleep(self.max_delay)  # the agent may still be uploading
                    continue
                if code in ("NoSuchKey", "404"):
                    raise ExecutorError(
                        f"The command's {stream} was too long for AWS SSM to return and is not in s3://{cfg.s3_bucket}/{key}: "
                        "check that the head node's instance role may write there."
                    ) from None
                raise self._aws_error(exc, f"GetObject (the command's {stream} in s3://{cfg.s3_bucket})") from None
            except BotoCoreError as exc:
                raise self._aws_error(exc, f"GetObject (the command's {stream} in s3://{cfg.s3_bucket})") from None
        raise AssertionError("unreachable")

    def _log(self, username: str, argv: list[str], command_id, status: str, started: float) -> None:
        logger.info("ssm command cluster=%s user=%s argv0=%s command_id=%s status=%s seconds=%.2f",
                    self.cluster.slug, username, argv[0], command_id or "-", status, self.clock() - started)


def executor_for(cluster: Cluster) -> Executor:
    if cluster.backend == Cluster.Backend.LOCAL:
        return LocalExecutor()
    if cluster.backend == Cluster.Backend.SSM:
        return SsmExecutor(cluster)
    raise ExecutorError(f"No executor for the {cluster.backend!r} backend.")
