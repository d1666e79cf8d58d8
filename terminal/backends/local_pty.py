"""Local PTY backend: a login shell on this machine as the mapped POSIX user.

The shell runs under `setsid -c` so it gets its own session with the PTY as controlling terminal, as
the user via `runuser` (portal runs as root) or `sudo -n` (portal runs as another user), or directly
when the mapped user is the portal's own user. Its environment is rebuilt from nothing. When the
session ends every process of that kernel session is signalled (SIGHUP, then SIGKILL), so nothing the
user started in the foreground or background of that shell outlives it.
"""

import asyncio
import fcntl
import os
import pwd
import signal
import struct
import termios
import threading
import time
from datetime import UTC, datetime

from clusters.posix import PosixAccountError, SystemAccountRefused, become_user_argv, check_posix_account, clean_environment
from clusters.spawn import reap, spawn_clean, wait_exit_code
from terminal.backends.base import BackendError, SessionBackend, ShellRequest

CWD_FAILED_EXIT = 97
# Runs as the user, so POSIX permissions decide whether the directory may be entered. The directory
# is an argument ($1), never part of the script text.
_ENTER_CWD_AND_EXEC = f'cd -- "$1" || exit {CWD_FAILED_EXIT}; exec "$SHELL" -l'
READ_CHUNK = 64 * 1024
# Where setsid/runuser/sudo/env are found; the shell's own PATH is set inside `env -i`.
SPAWN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_PENDING_INPUT = 1024 * 1024
KILL_GRACE_SECONDS = 1.0
EARLY_EXIT_SECONDS = 1.0
INTERRUPT = b"\x03"


class AccessRefused(BackendError):
    """The mapping points at an account the portal must never open a shell for."""


def check_shell_account(username: str, expected_uid: int) -> pwd.struct_passwd:
    try:
        return check_posix_account(username, expected_uid, need_login_shell=True)
    except SystemAccountRefused as exc:
        raise AccessRefused(str(exc)) from None
    except PosixAccountError as exc:
        raise BackendError(str(exc)) from None


def _scan_sessions() -> dict[int, list[int]]:
    """Live (non-zombie) processes of this machine by kernel session id: one pass over /proc."""
    sessions: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp session ..."; comm may hold spaces and parentheses.
        fields = stat[stat.rindex(b")") + 2 :].split()
        if fields[0] != b"Z":
            sessions.setdefault(int(fields[3]), []).append(int(name))
    return sessions


_scan_lock = threading.Lock()
_last_scan: tuple[float, dict[int, list[int]]] = (float("-inf"), {})


def session_pids(sid: int, max_age: float = 0.0, not_before: float = float("-inf")) -> list[int]:
    """Live (non-zombie) processes of kernel session `sid`.

    `max_age` > 0 lets concurrent callers share one scan of /proc that is at most that old (and not
    taken before `not_before`, the session's start: an older scan could not know its processes).
    Ending a thousand sessions at once (a shutdown) then costs a scan per interval, not one per
    session per poll. A shared scan can only err towards processes that have just exited.
    """
    global _last_scan
    with _scan_lock:
        taken, sessions = _last_scan
        if time.monotonic() - taken > max_age or taken < not_before:
            sessions = _scan_sessions()
            _last_scan = (time.monotonic(), sessions)
    return list(sessions.get(sid, ()))


# How stale a shared scan may be for the end-of-session loops below (they poll every 20–50 ms).
_SHARED_SCAN_AGE = 0.05


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def process_start_time(pid: int) -> datetime | None:
    """When `pid` started (from /proc), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    ticks = int(stat[stat.rindex(b")") + 2 :].split()[19])  # field 22, starttime: clock ticks after boot
    return datetime.fromtimestamp(_boot_time() + ticks / os.sysconf("SC_CLK_TCK"), UTC)


def _boot_time() -> float:
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def kill_kernel_session(sid: int, grace: float = KILL_GRACE_SECONDS) -> int:
    """End every process of kernel session `sid` from outside (its terminal is gone): SIGHUP, then SIGKILL.

    For shells whose portal process died. Returns how many processes there were.
    """
    pids = session_pids(sid, _SHARED_SCAN_AGE)
    if not pids:
        return 0
    _signal_all(pids, signal.SIGHUP)
    _signal_all(pids, signal.SIGCONT)
    deadline = time.monotonic() + grace
    while (left := session_pids(sid, _SHARED_SCAN_AGE)) and time.monotonic() < deadline:
        time.sleep(0.05)
    _signal_all(left, signal.SIGKILL)
    return len(pids)


class LocalPtyBackend(SessionBackend):
    name = "local"

    def __init__(self, **callbacks):
        super().__init__(**callbacks)
        self._fd: int | None = None
        self._pidfd: int | None = None
        self._pid: int | None = None  # the session leader (`setsid -c`): its pid is the kernel session id
        self._exit_code: int | None = None  # once the leader is reaped
        self._reading = False
        self._pending_input = bytearray()
        self._terminated = False
        self._started_at = 0.0
        self._typed = False
        self._cwd: str | None = None

    def _command(self, entry: pwd.struct_passwd, working_directory: str) -> list[str]:
        shell_argv = ["env", "-i", "TERM=xterm-256color", *clean_environment(entry), "/bin/sh", "-c", _ENTER_CWD_AND_EXEC, "sh", working_directory]
        return ["setsid", "-c", *become_user_argv(entry), *shell_argv]

    async def start(self, request: ShellRequest) -> None:
        loop = asyncio.get_running_loop()
        entry = check_shell_account(request.posix_username, request.expected_uid)
        self.shell = entry.pw_shell or "/bin/sh"
        self._cwd = request.working_directory
        argv = self._command(entry, request.working_directory or entry.pw_dir)
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", request.rows, request.cols, 0, 0))
        try:  # clean signal dispositions and mask, whatever the portal inherited (clusters/spawn.py)
            self._pid = spawn_clean(argv, stdio=(slave, slave, slave), env={"PATH": SPAWN_PATH})
        except OSError as exc:
            os.close(master)
            raise BackendError(f"Could not start the shell: {exc.strerror} ({argv[0]}).") from None
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self._fd = master
        self._started_at = time.monotonic()
        self.session_id = str(self._pid)
        self._pidfd = os.pidfd_open(self._pid)
        loop.add_reader(self._pidfd, self._on_leader_exit)
        self.resume_reading()

    # --- output -----------------------------------------------------------------------------
    def pause_reading(self) -> None:
        if self._reading:
            asyncio.get_running_loop().remove_reader(self._fd)
            self._reading = False

    def resume_reading(self) -> None:
        if not self._reading and not self._terminated and self._fd is not None:
            asyncio.get_running_loop().add_reader(self._fd, self._on_readable)
            self._reading = True

    def _on_readable(self) -> None:
        budget = self.read_budget()
        if budget <= 0:
            self.pause_reading()
            return
        try:
            data = os.read(self._fd, min(budget, READ_CHUNK))
        except BlockingIOError:
            return
        except OSError:  # EIO: every slave descriptor is closed; the leader's exit ends the session.
            data = b""
        if not data:
            self.pause_reading()
            return
        self.on_output(data)

    def _drain(self, limit: int = 256 * 1024) -> None:
        """Read what the shell printed last, once it has exited (bounded)."""
        while limit > 0 and self._fd is not None:
            try:
                data = os.read(self._fd, min(limit, READ_CHUNK))
            except OSError:
                return
            if not data:
                return
            limit -= len(data)
            self.on_output(data)

    def _on_leader_exit(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        code = self._exit_code = wait_exit_code(self._pid)
        self.pause_reading()
        self._drain()
        message = None
        if code == CWD_FAILED_EXIT and self._cwd:
            message = f"Cannot enter the working directory {self._cwd}."
        elif code != 0 and not self._typed and time.monotonic() - self._started_at < EARLY_EXIT_SECONDS:
            message = f"The shell exited right after starting (exit code {code}); the output above may say why."
        self.on_exit(code, message)

    # --- input ------------------------------------------------------------------------------
    def write(self, data: bytes) -> bool:
        """Queue keystrokes for the shell. False if the shell is not keeping up (input dropped)."""
        if self._fd is None or self._terminated:
            return False
        self._typed = True
        if self._pending_input and INTERRUPT in data:
            self._interrupt_stuck_input()
            data = data[data.rindex(INTERRUPT) + 1 :]
            if not data:
                return True
        if self._pending_input:
            if len(self._pending_input) + len(data) > MAX_PENDING_INPUT:
                return False
            self._pending_input += data
            return True
        try:
            written = os.write(self._fd, data)
        except BlockingIOError:
            written = 0
        except OSError:
            return False
        if written < len(data):
            self._pending_input += data[written:]
            asyncio.get_running_loop().add_writer(self._fd, self._flush_input)
        return True

    def _interrupt_stuck_input(self) -> None:
        """Ctrl-C while the terminal's input queue is full (a program that reads no input, a big paste).

        The ^C byte could only queue behind the unread input, so do what the line discipline would
        do with it: drop our unread input and send SIGINT to the terminal's foreground process group.
        """
        self._pending_input.clear()
        asyncio.get_running_loop().remove_writer(self._fd)
        try:
            os.killpg(os.tcgetpgrp(self._fd), signal.SIGINT)
        except OSError:  # no foreground group, or not ours to signal (sudo to another user)
            pass

    def _flush_input(self) -> None:
        try:
            written = os.write(self._fd, self._pending_input)
        except BlockingIOError:
            return
        except OSError:
            written = len(self._pending_input)
        del self._pending_input[:written]
        if not self._pending_input:
            asyncio.get_running_loop().remove_writer(self._fd)

    def resize(self, cols: int, rows: int) -> None:
        if self._fd is not None and not self._terminated:
            fcntl.ioctl(self._fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    # --- end --------------------------------------------------------------------------------
    def _leader_reaped(self) -> bool:
        if self._exit_code is None:
            self._exit_code = reap(self._pid)
        return self._exit_code is not None

    async def terminate(self) -> None:
        if self._terminated or self._pid is None:
            return
        self._terminated = True
        loop = asyncio.get_running_loop()
        if self._reading:
            loop.remove_reader(self._fd)
            self._reading = False
        if self._pending_input:
            loop.remove_writer(self._fd)
        sid = self._pid
        leader_gone = loop.create_future()
        if self._pidfd is not None:  # from now on the leader's exit only wakes us, no on_exit callback
            loop.remove_reader(self._pidfd)
            loop.add_reader(self._pidfd, lambda: leader_gone.done() or leader_gone.set_result(None))
        # Scanning /proc takes milliseconds with many processes: keep it off the event loop.
        pids = await asyncio.to_thread(session_pids, sid, _SHARED_SCAN_AGE, self._started_at)
        _signal_all(pids, signal.SIGHUP)
        _signal_all(pids, signal.SIGCONT)  # a stopped job must wake up to see its SIGHUP
        os.close(self._fd)  # hang up the terminal
        self._fd = None
        deadline = loop.time() + KILL_GRACE_SECONDS
        if self._pidfd is not None:
            try:
                await asyncio.wait_for(leader_gone, KILL_GRACE_SECONDS)
            except TimeoutError:
                pass
            loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        while pids := await asyncio.to_thread(session_pids, sid, _SHARED_SCAN_AGE, self._started_at):
            if loop.time() >= deadline:
                _signal_all(pids, signal.SIGKILL)
                break
            await asyncio.sleep(0.02)  # a shared scan is reused for up to _SHARED_SCAN_AGE
        for _ in range(50):  # reap the leader (SIGKILLed above if it ignored the hangup)
            if self._leader_reaped():
                break
            await asyncio.sleep(0.02)
