"""Starting a process for a user with a clean slate: default signal handling, nothing blocked.

`subprocess.Popen` hands the child whatever the portal's own parent left behind. A portal started in
the background of a script (`make demo &`), under `nohup` or by some supervisors has SIGINT and
SIGQUIT (and SIGHUP) *ignored*, and ignored signals survive exec: the user's login shell and every
program in it would ignore Ctrl-C and the closing hangup. A blocked-signal mask survives exec too.

`os.posix_spawn` resets both in the child before it executes anything (POSIX_SPAWN_SETSIGDEF and
POSIX_SPAWN_SETSIGMASK), with no Python code running between fork and exec — safe in a process with
threads, unlike a `preexec_fn`. Every process the portal starts for a user goes through here; the
environment is the caller's (always a minimal one, rebuilt from nothing).
"""

import os
import select
import selectors
import signal
import time
from dataclasses import dataclass
from typing import BinaryIO

# Every signal a program may handle; SIGKILL and SIGSTOP cannot be caught or ignored anyway. (glibc
# reserves 32 and 33 for itself and its posix_spawn leaves those ignored; glibc re-arms them on use.)
_RESETTABLE = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
_STDIO = (0, 1, 2)
READ_CHUNK = 64 * 1024


def spawn_clean(argv: list[str], *, stdio: tuple[int, int, int], env: dict[str, str], new_session: bool = False) -> int:
    """Start `argv` (looked up on env's PATH) with `stdio` as fds 0, 1 and 2; returns its pid.

    Every signal disposition is the default and the signal mask is empty in the child. Our other
    descriptors are not inherited (Python opens them close-on-exec). The caller reaps the child.
    """
    file_actions = [(os.POSIX_SPAWN_DUP2, fd, target) for fd, target in zip(stdio, _STDIO, strict=True)]
    return os.posix_spawnp(
        argv[0], argv, env, file_actions=file_actions, setsid=new_session, setsigdef=_RESETTABLE, setsigmask=(),
    )


def reap(pid: int) -> int | None:
    """The exit code (negative: killed by that signal) if `pid` has exited, else None. Never blocks."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status) if done else None


def wait_exit_code(pid: int) -> int:
    """Wait for `pid` (a child of ours) and return its exit code (negative: killed by that signal)."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@dataclass(frozen=True)
class Captured:
    returncode: int
    stdout: bytes
    stderr: bytes


class CaptureTimeout(Exception):
    pass


class OutputTooLarge(Exception):
    pass


def run_captured(argv: list[str], *, env: dict[str, str], stdin: bytes | BinaryIO | None, timeout: float,
                 max_output: int) -> Captured:
    """Run `argv` in a new session with clean signals, feed `stdin`, capture stdout and stderr.

    `stdin` is bytes, or a readable binary file that is fed READ_CHUNK at a time (an upload of any
    size never sits in memory whole). On a timeout or too much output the whole session (the
    command and whatever it started) is killed and reaped before CaptureTimeout / OutputTooLarge.
    """
    in_r, in_w = os.pipe() if stdin is not None else (os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), -1)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        pid = spawn_clean(argv, stdio=(in_r, out_w, err_w), env=env, new_session=True)
    except BaseException:
        for fd in (in_r, in_w, out_r, out_w, err_r, err_w):
            if fd >= 0:
                os.close(fd)
        raise
    for fd in (in_r, out_w, err_w):
        os.close(fd)
    chunks = {out_r: [], err_r: []}
    source = stdin if hasattr(stdin, "read") else None
    pending = memoryview(source.read(READ_CHUNK) if source is not None else (stdin or b""))
    total = 0
    deadline = time.monotonic() + timeout
    failure: Exception | None = None
    with selectors.DefaultSelector() as selector:
        for fd in (out_r, err_r):
            selector.register(fd, selectors.EVENT_READ)
        if in_w >= 0:
            if pending:
                os.set_blocking(in_w, False)
                selector.register(in_w, selectors.EVENT_WRITE)
            else:
                os.close(in_w)
                in_w = -1
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                failure = CaptureTimeout()
                break
            for key, _ in selector.select(left):
                fd = key.fd
                if fd == in_w:
                    try:
                        pending = pending[os.write(fd, pending[:READ_CHUNK]):]
                        if not pending and source is not None:
                            pending = memoryview(source.read(READ_CHUNK))
                    except BrokenPipeError:  # the command does not read all of its input
                        pending = pending[:0]
                    if not pending:
                        selector.unregister(fd)
                        os.close(fd)
                        in_w = -1
                    continue
                data = os.read(fd, READ_CHUNK)
                if not data:
                    selector.unregister(fd)
                    continue
                chunks[fd].append(data)
                total += len(data)
            if total > max_output:
                failure = OutputTooLarge()
                break
    for fd in (in_w, out_r, err_r):
        if fd >= 0:
            os.close(fd)
    # The output is closed; the command itself may still be finishing (or have left a child holding nothing).
    if failure is None and (code := reap(pid)) is None:
        pidfd = os.pidfd_open(pid)
        try:
            ready, _, _ = select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))
        finally:
            os.close(pidfd)
        if not ready or (code := reap(pid)) is None:
            failure = CaptureTimeout()
    if failure is not None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_exit_code(pid)
        raise failure
    return Captured(code, b"".join(chunks[out_r]), b"".join(chunks[err_r]))
