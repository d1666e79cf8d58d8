"""Executors: run one command as a given POSIX user on a cluster's head node.

Every Slurm command the portal runs goes through here, as an argv list (never a shell string), with
a timeout and captured output. The local executor runs on this machine (runuser as root, sudo -n
otherwise); the SSM executor (its own issue) runs the same argv through AWS SendCommand.
"""

import os
import signal
import subprocess
import time
from dataclasses import dataclass

from clusters.models import Cluster, ClusterAccount
from clusters.posix import PosixAccountError, become_user_argv, check_posix_account, clean_environment

MAX_OUTPUT_BYTES = 64 * 1024 * 1024  # squeue of a 20k-job queue is a few MB


class ExecutorError(Exception):
    """The command could not be run at all (no such user, timeout, executor down); fit for the user."""


class CommandTimeout(ExecutorError):
    pass


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

    def run(self, account, argv, *, stdin=None, timeout=30, env=None) -> CommandResult:
        if not argv or not all(isinstance(a, str) and "\x00" not in a for a in argv):
            raise ValueError("argv must be a non-empty list of strings without NUL bytes")
        try:
            entry = check_posix_account(account.posix_username, account.uid)
        except PosixAccountError as exc:
            raise ExecutorError(str(exc)) from None
        full = [*become_user_argv(entry), "env", "-i", *clean_environment(entry, **(env or {})), *argv]
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                full, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, cwd="/", start_new_session=True,
                env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
            )
        except OSError as exc:
            raise ExecutorError(f"Could not run {argv[0]}: {exc.strerror}.") from None
        try:
            stdout, stderr = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            # The whole process group: runuser and whatever it started.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
            raise CommandTimeout(f"{argv[0]} did not finish within {timeout:g} s.") from None
        if len(stdout) > MAX_OUTPUT_BYTES:
            raise ExecutorError(f"{argv[0]} printed more than {MAX_OUTPUT_BYTES // 2**20} MiB.")
        return CommandResult(tuple(argv), proc.returncode, stdout, stderr, time.monotonic() - started)


def executor_for(cluster: Cluster) -> Executor:
    if cluster.backend == Cluster.Backend.LOCAL:
        return LocalExecutor()
    raise ExecutorError(f"The {cluster.get_backend_display()} executor is not available yet.")
