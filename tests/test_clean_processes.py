"""Every process started for a user starts clean: default signal dispositions and an empty signal mask,
whatever the portal itself inherited (a portal started with `nohup`, `make demo &` or by a supervisor
that ignores SIGINT/SIGQUIT/SIGHUP must still give users a shell where Ctrl-C works)."""

import asyncio
import contextlib
import signal
import sys

import pytest

from clusters.executors import CommandTimeout, LocalExecutor
from clusters.models import ClusterAccount
from terminal import protocol
from tests.conftest import run_daphne
from tests.terminal_client import signed_in_cookie, ws_terminal

INHERITED_IGNORED = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)
INHERITED_BLOCKED = {signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT}


def _mask(*signals) -> int:
    return sum(1 << (s - 1) for s in signals)


# Signals a program can use. glibc keeps 32 and 33 for itself (thread cancellation, setxid): its
# posix_spawn leaves them ignored in the child, and glibc installs its own handlers where it needs them.
USABLE = _mask(*signal.valid_signals())


def _status_masks(text: str) -> dict[str, int]:
    """SigBlk/SigIgn/SigCgt of /proc/<pid>/status as integers."""
    fields = dict(line.split(":\t", 1) for line in text.splitlines() if line.startswith(("SigBlk", "SigIgn", "SigCgt")))
    return {name: int(value.strip(), 16) for name, value in fields.items()}


@contextlib.contextmanager
def portal_started_like_nohup():
    """This process ignores SIGINT/SIGQUIT/SIGHUP and blocks some signals, as under `nohup ... &`."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in INHERITED_IGNORED}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, INHERITED_BLOCKED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        for s, handler in previous.items():
            signal.signal(s, handler)


def test_executor_commands_start_with_default_signals_and_an_empty_mask(cast):
    account = ClusterAccount.objects.get(cluster=cast.hpc, user=cast.bob)
    with portal_started_like_nohup():
        result = LocalExecutor().run(account, ["cat", "/proc/self/status"], timeout=30)
    assert result.ok, result.error_text()
    masks = _status_masks(result.stdout.decode())
    assert masks["SigIgn"] & USABLE == 0, f"inherited ignored signals: {masks['SigIgn']:#x}"
    assert masks["SigBlk"] == 0, f"inherited blocked signals: {masks['SigBlk']:#x}"


def test_executor_still_feeds_stdin_captures_both_streams_and_times_out(cast):
    account = ClusterAccount.objects.get(cluster=cast.hpc, user=cast.bob)
    big = b"x" * (1024 * 1024)  # more than a pipe holds: input and output must flow together
    result = LocalExecutor().run(account, ["sh", "-c", "cat; echo oops >&2; exit 3"], stdin=big, timeout=30)
    assert (result.returncode, result.stdout, result.stderr) == (3, big, b"oops\n")
    assert LocalExecutor().run(account, ["pwd"], timeout=30).stdout == b"/\n"
    with pytest.raises(CommandTimeout):
        LocalExecutor().run(account, ["sh", "-c", "sleep 30 & sleep 30"], timeout=0.5)


# A daphne whose parent ignored SIGINT/SIGQUIT/SIGHUP and blocked SIGUSR1/SIGUSR2/SIGINT (kept across exec).
_NOHUP_DAPHNE = (
    "import os, signal, sys\n"
    f"for s in {tuple(int(s) for s in INHERITED_IGNORED)}: signal.signal(s, signal.SIG_IGN)\n"
    f"signal.pthread_sigmask(signal.SIG_BLOCK, {set(int(s) for s in INHERITED_BLOCKED)})\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'daphne', *sys.argv[1:]])\n"
)


async def prompt_after(term, marker: bytes, timeout: float = 20) -> None:
    """Wait until `marker` was printed and the shell's prompt came back after it."""
    def seen():
        at = term.output.find(marker)
        return at >= 0 and b"__PROMPT__ " in term.output[at + len(marker):]

    await term.pump_until(seen, timeout, f"the prompt after {marker!r}")


@pytest.mark.slow
def test_ctrl_c_works_in_a_shell_of_a_portal_started_with_signals_ignored(cast, transactional_db, tmp_path, settings):
    with run_daphne(tmp_path, settings, launcher=[sys.executable, "-c", _NOHUP_DAPHNE]) as server:
        daphne_status = _status_masks(open(f"/proc/{server.proc.pid}/status").read())
        assert daphne_status["SigIgn"] & _mask(*INHERITED_IGNORED) == _mask(*INHERITED_IGNORED)  # the set-up holds
        cookie = signed_in_cookie(cast.bob)

        async def session():
            async with ws_terminal(server, cookie) as term:
                ws = term.ws
                # What the shell's children inherit from it: nothing ignored, nothing blocked.
                await ws.send(protocol.encode_input(b"PS1='__P''ROMPT__ '; grep ^Sig /proc/self/status; echo masks''-done\r"))
                await prompt_after(term, b"masks-done\r\n")
                masks = _status_masks(bytes(term.output).decode(errors="replace").replace("\r\n", "\n")
                                      .split("grep ^Sig /proc/self/status", 1)[1])
                assert masks["SigIgn"] & USABLE == 0 and masks["SigBlk"] == 0, masks
                for program in (b"yes", b"sleep 100"):
                    term.output.clear()  # the shell is at its prompt: nothing more is on its way
                    await ws.send(protocol.encode_input(program + b"\r"))
                    await term.output_has(b"y\r\ny\r\n" if program == b"yes" else program + b"\r\n")
                    assert b"__PROMPT__ " not in term.output
                    await ws.send(protocol.encode_input(b"\x03"))
                    await term.output_has(b"__PROMPT__ ", timeout=20)
                    name = program.split()[0]
                    await ws.send(protocol.encode_input(b"echo after-''ctrl-c-" + name + b"\r"))
                    await prompt_after(term, b"after-ctrl-c-" + name + b"\r\n")

        asyncio.run(session())
