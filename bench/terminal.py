#!/usr/bin/env python3
"""Terminal benchmark: Clusterra's relay next to a raw PTY and Jupyter's terminado, same shell, same user.

Scenarios (docs: bench/README.md; method: shared reference "terminal-perf-and-django-style.md" A4):

- echo:  N concurrent sessions (default 1, 10, 100) run `cat > /dev/null`; each types one 'x' every
         1/rate s on a fixed schedule. Latency = intended send time → first output frame holding the
         tty's echo of that byte (measuring from the intended time avoids coordinated omission).
- bulk:  one session runs `head -c <N>M /dev/zero | base64 -w 120; echo __END__`; the client takes
         (and, for Clusterra, ACKs) every frame at once. MB/s (10^6 bytes) of output payload from
         the first base64 byte to the end marker.
- ctrlc: one session runs `yes`; after a few seconds the client sends ^C and times until the
         sentinel prompt appears.

Targets:
- raw:        the shell on a PTY read by this process (no relay): the floor.
- terminado:  terminado's TermSocket + UniqueTermManager on Tornado, in a subprocess (JSON text frames).
- clusterra:  daphne + clusterra.asgi in a subprocess, with a fresh data directory, a `bench` tenant,
              a `local` cluster and a user mapped to the POSIX user `clusterra-bench` (created when root;
              otherwise the current user).
- clusterra-ssm: the same daphne, on a second cluster `ssm` with the SSM backend. Its AWS endpoints
              (STS and SSM) are the control-plane stand-in tests/aws_control_plane.py, which starts the
              sessions on the Session Manager emulator tests/ssm_emulator.py (MGS + agent, data channel
              with the agent's handshake, a real PTY); both run in one helper subprocess, so that their
              CPU is neither the client's nor daphne's. Path per keystroke: client → daphne → data
              channel (binary frames, SHA-256 digests, acks) → emulator → PTY, and back.

Every target starts the same command line (`[setsid -c] [runuser -u USER --] env -i … /bin/sh -c
'cd HOME; exec $SHELL -l'`, as the local PTY backend does). The client side is one asyncio process.

Run from the repository root:  .venv/bin/python bench/terminal.py [--json results.json]
Exit status: 0 when every scenario ran (targets missed are only reported), 1 when something failed,
130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import ctypes
import fcntl
import json
import math
import os
import platform
import pwd
import selectors
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections import deque
from pathlib import Path

import websockets
from websockets.asyncio.client import connect as ws_connect

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from terminal.protocol import OUTPUT, STATUS, encode_ack, encode_input, encode_terminate  # noqa: E402

ACK_THRESHOLD = 64 * 1024  # the browser's policy (static/terminal/terminal.js): ack at min(this, LOW) bytes...
ACK_DELAY = 1.0  # ...else within this long

now_ns = time.perf_counter_ns

BENCH_USER = "clusterra-bench"
TENANT, CLUSTER = "bench", "local"
COLS, ROWS = 160, 48
KEY = b"x"
NEWLINE_EVERY = 1000  # keys; keeps `cat`'s canonical line well below the 4 KiB line limit
PROMPT = b"__P__$ "
SET_PROMPT = b"PROMPT_COMMAND=; PS1='__P''__$ '\n"  # the typed line never contains the sentinel itself
START_CAT = b"echo __C''AT__; cat > /dev/null\n"
CAT_STARTED = b"__CAT__"
END_MARK = b"__END__"
OPEN_CONCURRENCY = 10
SHELL_READY_TIMEOUT = 30.0
CTRLC_TIMEOUT = 30.0
TARGET_NAMES = {"raw": "raw PTY", "terminado": "terminado", "ttyd": "ttyd", "clusterra": "Clusterra",
                "clusterra-ssm": "Clusterra SSM"}
ALL_TARGETS = ("raw", "terminado", "ttyd", "clusterra", "clusterra-ssm")
DEFAULT_TARGETS = ("raw", "terminado", "clusterra", "clusterra-ssm")  # ttyd when installed (bench/README.md)
CLUSTERRA_TARGETS = ("clusterra", "clusterra-ssm")
SSM_CLUSTER = "ssm"
SSM_REGION = "us-east-1"
SSM_ROLE = "arn:aws:iam::123456789012:role/clusterra-bench"
SSM_DOCUMENT = "Clusterra-Shell-bench"


class BenchError(Exception):
    """A scenario could not run or gave a wrong answer (lost echoes, timeouts, refused sockets)."""


# --- small helpers ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(sorted_values: list[int], p: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _cpu_seconds(pid: int) -> tuple[int, float] | None:
    """(kernel session id, utime + stime of all its threads) of a process, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[3]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def server_pids(pid: int | None) -> list[int]:
    """A server we started and every helper it runs in its kernel session (it is the session leader:
    start_new_session). The shells are not in it: each target gives them a session of their own (setsid
    with the PTY as controlling terminal), so their CPU is not the relay's."""
    if pid is None or _cpu_seconds(pid) is None:
        return []
    pids = [pid]
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != pid and (st := _cpu_seconds(int(name))) is not None and st[0] == pid:
            pids.append(int(name))
    return pids


def cpu_seconds(pid: int | None) -> float | None:
    """CPU seconds (user + system, all threads) used so far by the server `pid` and its helpers (server_pids)."""
    pids = server_pids(pid)
    return sum((st[1] for p in pids if (st := _cpu_seconds(p)) is not None), 0.0) if pids else None


def context_switches(pid: int | None) -> int | None:
    """Voluntary context switches of the server and its helpers, all threads: how often it went to sleep, i.e.
    was woken up (by a timer or I/O)."""
    total = None
    for p in server_pids(pid):
        with contextlib.suppress(OSError, ValueError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            total = (total or 0) + int(line.split()[1])
    return total


def rss_mb(pid: int | None) -> float | None:
    """Resident memory of the server `pid` and its helpers, MB."""
    pids = server_pids(pid)
    return sum(_rss_mb(p) for p in pids) if pids else None


def proc_stat(pid: int) -> tuple[int, int, bytes] | None:
    """(session id, uid, state) of a process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    return int(fields[3]), uid, fields[0]


def live_pids(*, sids: set[int] | None = None, uid: int | None = None) -> list[int]:
    """Live (non-zombie) processes in one of `sids` or owned by `uid`."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = proc_stat(int(name))
        if st is None or st[2] == b"Z":
            continue
        if (sids is not None and st[0] in sids) or (uid is not None and st[1] == uid):
            found.append(int(name))
    return found


def kill_sessions(sids: set[int]) -> int:
    """SIGKILL what is left of kernel sessions we started; returns how many processes were left."""
    pids = live_pids(sids=sids) if sids else []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class Matcher:
    """Finds `needle` in a byte stream, across frame boundaries; remembers when."""

    def __init__(self, needle: bytes):
        self.needle = needle
        self.tail = b""
        self.found_at: int | None = None
        self.event = asyncio.Event()

    def feed(self, data: bytes, t: int) -> bool:
        if self.found_at is None:
            window = self.tail + data[: len(self.needle) - 1] if self.tail else b""
            if self.needle in data or (window and self.needle in window):
                self.found_at = t
                self.event.set()
            else:
                keep = len(self.needle) - 1
                self.tail = (self.tail + data[-keep:])[-keep:] if keep else b""
        return self.found_at is not None

    async def wait(self, timeout: float, what: str, session: Session):
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
        except TimeoutError:
            raise BenchError(f"{session.target}: {what} not seen within {timeout:.0f} s; last output {session.last_output()!r}") from None
        return self.found_at


# --- sessions: one class per target, same interface ---------------------------------------------
class Session:
    """One terminal. `handler(data, t_ns)` sees every output chunk as it arrives."""

    target = "?"

    def __init__(self):
        self.handler = None
        self.rx_bytes = 0
        self._recent = deque(maxlen=8)
        self.closed = asyncio.Event()
        self.close_reason = ""

    def _deliver(self, data: bytes, t: int) -> None:
        self.rx_bytes += len(data)
        self._recent.append(data[-200:])
        if self.handler is not None:
            self.handler(data, t)

    def last_output(self) -> bytes:
        return b"".join(self._recent)[-300:]

    async def open(self) -> None:
        raise NotImplementedError

    async def send(self, data: bytes) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def expect_after(self, data: bytes, needle: bytes, timeout: float, what: str) -> int:
        """Send `data`, then wait for `needle` in the output that follows; returns the time it arrived."""
        m = Matcher(needle)
        self.handler = m.feed
        await self.send(data)
        try:
            return await m.wait(timeout, what, self)
        finally:
            self.handler = None

    async def prepare(self) -> None:
        """Open and bring the shell to a known prompt."""
        await self.open()
        await self.expect_after(SET_PROMPT, PROMPT, SHELL_READY_TIMEOUT, "the sentinel prompt")


class RawSession(Session):
    """The shell on a PTY read by this process, with the command line the local backend uses."""

    target = "raw"

    def __init__(self, argv: list[str], started_sids: set[int]):
        super().__init__()
        self.argv = argv
        self.fd: int | None = None
        self.proc: subprocess.Popen | None = None
        self.started_sids = started_sids

    async def open(self) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        try:
            self.proc = subprocess.Popen(
                ["setsid", "-c", *self.argv], stdin=slave, stdout=slave, stderr=slave, cwd="/", close_fds=True,
                env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
            )
        finally:
            os.close(slave)
        self.started_sids.add(self.proc.pid)
        os.set_blocking(master, False)
        self.fd = master
        asyncio.get_running_loop().add_reader(master, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.fd)
            self.close_reason = "EOF"
            self.closed.set()
            return
        self._deliver(data, now_ns())

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view):]
            except BlockingIOError:
                await asyncio.sleep(0.001)

    async def close(self) -> None:
        if self.fd is None:
            return
        loop = asyncio.get_running_loop()
        if not self.closed.is_set():
            loop.remove_reader(self.fd)
        os.close(self.fd)  # hangs up the terminal: the shell gets SIGHUP
        self.fd = None
        for _ in range(100):
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.02)
        if self.proc.poll() is None:
            kill_sessions({self.proc.pid})
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(1)


class _WsSession(Session):
    def __init__(self):
        super().__init__()
        self.ws = None
        self._reader: asyncio.Task | None = None
        self.nodelay: bool | None = None

    async def _connect(self, url: str, origin: str, headers: dict | None = None):
        self.ws = await ws_connect(
            url, origin=origin, additional_headers=headers, compression=None, max_size=None,
            ping_interval=None, open_timeout=SHELL_READY_TIMEOUT, close_timeout=5,
        )
        sock = self.ws.transport.get_extra_info("socket")
        if sock is not None:
            self.nodelay = bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        self._reader = asyncio.create_task(self._read_loop())

    async def _read_loop(self):
        try:
            async for message in self.ws:
                await self._on_message(message, now_ns())
            self.close_reason = f"closed ({self.ws.close_code})"
        except websockets.ConnectionClosed as exc:
            self.close_reason = f"closed ({exc.rcvd.code if exc.rcvd else 'no close frame'})"
        except Exception as exc:  # reported by whoever waits on this session
            self.close_reason = f"client error: {exc!r}"
        finally:
            self.closed.set()

    async def _on_message(self, message, t: int):
        raise NotImplementedError

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 10)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader


class ClusterraSession(_WsSession):
    """Clusterra's binary protocol, acking as the browser does (at 64 KiB or LOW, else within 1 s)."""

    def __init__(self, port: int, cookie: str, cluster: str = CLUSTER, target: str = "clusterra"):
        super().__init__()
        self.port, self.cookie, self.cluster, self.target = port, cookie, cluster, target
        self.connected = asyncio.Event()
        self.statuses: list[dict] = []
        self.unacked = 0
        self.ack_threshold = ACK_THRESHOLD
        self.ack_delay = ACK_DELAY
        self._ack_timer: asyncio.TimerHandle | None = None

    async def open(self) -> None:
        await self._connect(
            f"ws://127.0.0.1:{self.port}/ws/t/{TENANT}/c/{self.cluster}/terminal/?cols={COLS}&rows={ROWS}",
            origin=f"http://127.0.0.1:{self.port}", headers={"Cookie": f"sessionid={self.cookie}"},
        )
        waiter = asyncio.create_task(self.connected.wait())
        closer = asyncio.create_task(self.closed.wait())
        done, pending = await asyncio.wait({waiter, closer}, timeout=SHELL_READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if not self.connected.is_set():
            raise BenchError(f"{self.target}: no 'connected' status ({self.close_reason or 'timeout'}; statuses {self.statuses})")

    async def _on_message(self, message, t: int):
        if isinstance(message, str):
            raise BenchError(f"{self.target} sent a text frame")
        if message[0] == OUTPUT:
            self._deliver(message[1:], t)
            # The browser's policy (docs/terminal-protocol.md): ack at 64 KiB (or LOW if smaller), else within 1 s.
            self.unacked += len(message) - 1
            if self.unacked >= self.ack_threshold:
                await self._send_ack()
            elif self._ack_timer is None:
                self._ack_timer = asyncio.get_running_loop().call_later(self.ack_delay, lambda: asyncio.ensure_future(self._send_ack()))
        elif message[0] == STATUS:
            status = json.loads(message[1:])
            self.statuses.append(status)
            if status.get("type") == "connected":
                self.ack_threshold = min(ACK_THRESHOLD, status.get("low_watermark") or ACK_THRESHOLD)
                self.connected.set()
        else:
            raise BenchError(f"{self.target} sent unknown opcode {message[0]:#x}")

    async def _send_ack(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if self.unacked and not self.closed.is_set():
            count, self.unacked = self.unacked, 0
            with contextlib.suppress(Exception):  # the socket may be closing
                await self.ws.send(encode_ack(count))

    async def send(self, data: bytes) -> None:
        await self.ws.send(encode_input(data))

    async def close(self) -> None:
        # Closing the socket only detaches: the session would wait for a reattach (TERMINAL_REATTACH_GRACE).
        # End it as the page's close button does.
        if self.ws is not None and not self.closed.is_set():
            with contextlib.suppress(Exception):
                await self.ws.send(encode_terminate())
        await super().close()


class TerminadoSession(_WsSession):
    """terminado's JSON text frames: ["stdin", s] in, ["stdout", s] out."""

    target = "terminado"

    def __init__(self, port: int):
        super().__init__()
        self.port = port

    async def open(self) -> None:
        await self._connect(f"ws://127.0.0.1:{self.port}/websocket", origin=f"http://127.0.0.1:{self.port}")
        await self.ws.send(json.dumps(["set_size", ROWS, COLS, ROWS, COLS]))

    async def _on_message(self, message, t: int):
        kind, *rest = json.loads(message)
        if kind == "stdout":
            self._deliver(rest[0].encode("utf-8", "surrogateescape"), t)
        elif kind == "disconnect":
            self.close_reason = "disconnect"

    async def send(self, data: bytes) -> None:
        await self.ws.send(json.dumps(["stdin", data.decode()]))


class TtydSession(_WsSession):
    """ttyd's protocol (subprotocol `tty`): a JSON hello with the size starts the shell; then frames whose first
    byte is a command: b"0" + bytes is input (client → server) and output (server → client)."""

    target = "ttyd"

    def __init__(self, port: int):
        super().__init__()
        self.port = port

    async def open(self) -> None:
        self.ws = await ws_connect(
            f"ws://127.0.0.1:{self.port}/ws", subprotocols=["tty"], origin=f"http://127.0.0.1:{self.port}",
            compression=None, max_size=None, ping_interval=None, open_timeout=SHELL_READY_TIMEOUT, close_timeout=5,
        )
        sock = self.ws.transport.get_extra_info("socket")
        if sock is not None:
            self.nodelay = bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        await self.ws.send(json.dumps({"AuthToken": "", "columns": COLS, "rows": ROWS}).encode())
        self._reader = asyncio.create_task(self._read_loop())

    async def _on_message(self, message, t: int):
        if isinstance(message, str):
            message = message.encode()
        if message[:1] == b"0":
            self._deliver(message[1:], t)

    async def send(self, data: bytes) -> None:
        await self.ws.send(b"0" + data)


# --- servers --------------------------------------------------------------------------------------
DJANGO_SETUP = r"""
import json, os, sys
import django
django.setup()
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore
from accounts import services as accounts
from accounts.models import Membership
from clusters import services as clusters

args = json.loads(sys.argv[1])
tenant = accounts.ensure_tenant(slug=args["tenant"], name="Benchmark")
user = accounts.ensure_user(email="bench@bench.invalid", full_name="Benchmark user")
accounts.set_membership(tenant=tenant, user=user, role=Membership.Role.MEMBER)
cluster = clusters.ensure_cluster(tenant=tenant, slug=args["cluster"], name="Local (benchmark)",
                                  idle_timeout=args["timeout"], max_session_duration=args["timeout"])
clusters.map_account(cluster=cluster, user=user, posix_username=args["posix_user"], uid=args["uid"])
if args.get("ssm"):  # a second cluster on the SSM backend, against the control-plane stand-in
    ssm = clusters.ensure_cluster(tenant=tenant, slug=args["ssm"]["slug"], name="SSM (benchmark)", backend="ssm",
                                  backend_settings=args["ssm"]["settings"], idle_timeout=args["timeout"],
                                  max_session_duration=args["timeout"])
    clusters.map_account(cluster=ssm, user=user, posix_username=args["posix_user"], uid=args["uid"])
session = SessionStore()
session[SESSION_KEY] = str(user.pk)
session[BACKEND_SESSION_KEY] = "accounts.backends.PasswordBackend"
session[HASH_SESSION_KEY] = user.get_session_auth_hash()
session.create()
print(json.dumps({"session_key": session.session_key}))
"""

TERMINADO_SERVER = r"""
import asyncio, json, os, signal, sys
import tornado.web
from tornado.ioloop import IOLoop
from terminado import TermSocket, UniqueTermManager


class Manager(UniqueTermManager):
    # terminado signals the PTY's process group on disconnect. Here that group is runuser's alone (an
    # interactive bash moves to its own group), so the shell would outlive its socket. Hang up the
    # terminal instead, as the other two targets do; the data path is terminado's own.
    def client_disconnected(self, websocket):
        term = websocket.terminal
        if term is None or self.ptys_by_fd.pop(term.ptyproc.fd, None) is None:
            return
        IOLoop.current().remove_handler(term.ptyproc.fd)
        term.ptyproc.fileobj.close()
        term.ptyproc.closed = True
        self._reap(term.ptyproc.pid, 200)

    def _reap(self, pid, tries):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if not done and tries:
            IOLoop.current().call_later(0.05, self._reap, pid, tries - 1)


async def main(port, argv):
    manager = Manager(shell_command=argv, term_settings={"cwd": "/"})
    app = tornado.web.Application([(r"/websocket", TermSocket, {"term_manager": manager})])
    server = app.listen(port, address="127.0.0.1")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()
    await manager.shutdown()

asyncio.run(main(int(sys.argv[1]), json.loads(sys.argv[2])))
"""


SSM_PLANE = r"""
import json, signal, sys, threading
from pathlib import Path
from tests.aws_control_plane import AwsControlPlane, Role, default_shell
from tests.ssm_emulator import run_in_thread

args = json.loads(sys.argv[1])
state = Path(args["state_dir"])
stop = threading.Event()
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: stop.set())


def shell_for(run_as):  # the benchmark's shell command line for its user, as the other targets run it
    return args["argv"] if run_as == args["posix_user"] else default_shell(run_as)


async def shell_sessions(emu):
    return [s.proc.pid for s in emu.sessions.values() if s.proc is not None]


def write(name, data):
    tmp = state / (name + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(state / name)


with run_in_thread(handshake=True) as emu:
    plane = AwsControlPlane(emu, issuer=args["issuer"], region=args["region"], documents=(args["document"],),
                            roles={args["role"]: Role(max_session_duration=43200)}, shell_for=shell_for)
    with plane:
        write("ssm-ready.json", {"url": plane.url, "target": emu.emulator.target})
        while not stop.wait(0.5):  # the shells' kernel sessions, so the benchmark can clean up after a crash
            write("ssm-shells.json", emu.call(shell_sessions(emu.emulator)))
        write("ssm-shells.json", emu.call(shell_sessions(emu.emulator)))
    calls = {}
    for call in plane.calls:
        key = f"{call['operation']} {call['outcome']}"
        calls[key] = calls.get(key, 0) + 1
    counters = emu.emulator.counters
    summary = {"violations": emu.emulator.violations[:20], "violation_count": len(emu.emulator.violations),
               "calls": calls, "sessions": len(emu.emulator.sessions), "jwks_fetches": plane.jwks_fetches,
               "output_messages": counters.output_messages, "output_resends": counters.output_resends,
               "input_resends": counters.input_resends, "handshakes": counters.handshakes_completed}
write("ssm-summary.json", summary)
"""


class Servers:
    """Subprocesses we start (each in its own process group), and everything else to clean up."""

    def __init__(self, args):
        self.args = args
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.started_sids: set[int] = set()  # kernel sessions of raw shells
        self.tmp = Path(tempfile.mkdtemp(prefix="clusterra-bench-"))
        self.python = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
        self.daphne_pid: int | None = None
        self.terminado_pid: int | None = None
        self.ttyd_pid: int | None = None
        self.daphne_port = free_port()  # known before daphne starts: it is the token issuer the SSM stand-in trusts
        self.ssm_pid: int | None = None
        self.ssm_url = ""
        self.ssm_target = ""
        self.ssm_final: dict | None = None

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERRA_") or k.startswith("CLUSTERRA_TERMINAL_")}
        env.update(
            CLUSTERRA_DATA_DIR=str(self.tmp / "data"), DJANGO_SETTINGS_MODULE="clusterra.settings",
            CLUSTERRA_LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1",
        )
        return env

    def start(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(argv, cwd=REPO, env=env or self.env(), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs.append((name, proc))
        carry_niceness(proc.pid)
        return proc

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            return "\n".join((self.tmp / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_port(self, name: str, proc: subprocess.Popen, port: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")
            with socket.socket() as s:
                s.settimeout(0.2)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.1)
        raise BenchError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f} s:\n{self.log_tail(name)}")

    def run_step(self, name: str, argv: list[str], timeout: float = 300) -> str:
        try:
            done = subprocess.run(argv, cwd=REPO, env=self.env(), capture_output=True, text=True, timeout=timeout,
                                  start_new_session=True)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{name} took more than {timeout:.0f} s") from None
        if done.returncode != 0:
            raise BenchError(f"{name} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        return done.stdout

    def setup_clusterra(self, posix_user: str, uid: int) -> str:
        self.run_step("manage.py migrate", [self.python, "manage.py", "migrate", "--noinput", "-v", "0"])
        payload = {"tenant": TENANT, "cluster": CLUSTER, "posix_user": posix_user, "uid": uid, "timeout": 7 * 86400}
        if self.ssm_url:
            payload["ssm"] = {"slug": SSM_CLUSTER, "settings": {
                "region": SSM_REGION, "instance_id": self.ssm_target, "role_arn": SSM_ROLE, "document_name": SSM_DOCUMENT,
                "endpoint_url": self.ssm_url, "sts_endpoint_url": self.ssm_url, "session_duration": 43200}}
        out = self.run_step("Django set-up", [self.python, "-c", DJANGO_SETUP, json.dumps(payload)], timeout=120)
        return json.loads(out.strip().splitlines()[-1])["session_key"]

    def issuer_url(self) -> str:
        return f"http://127.0.0.1:{self.daphne_port}"

    def start_daphne(self) -> int:
        port = self.daphne_port
        # The portal signs its AWS tokens as this issuer; the SSM stand-in fetches the JWKS from it.
        env = {**self.env(), "CLUSTERRA_ISSUER_URL": self.issuer_url()}
        proc = self.start("daphne", [str(Path(self.python).parent / "daphne"), "-b", "127.0.0.1", "-p", str(port),
                                     "clusterra.asgi:application"], env=env)
        self.wait_port("daphne", proc, port)
        self.daphne_pid = proc.pid
        return port

    def start_terminado(self, argv: list[str]) -> int:
        port = free_port()
        proc = self.start("terminado", [self.python, "-c", TERMINADO_SERVER, str(port), json.dumps(argv)])
        self.wait_port("terminado", proc, port)
        self.terminado_pid = proc.pid
        return port

    def start_ttyd(self, argv: list[str]) -> int:
        """ttyd (C, libwebsockets): one process; each socket forks the shell on its own PTY."""
        binary = self.args.ttyd or shutil.which("ttyd")
        if not binary:
            raise BenchError("ttyd not found: install it (bench/README.md) or pass --ttyd PATH")
        port = free_port()
        # -W: writable (ttyd is read-only by default); -d 3: errors and warnings only, as daphne logs here.
        proc = self.start("ttyd", [binary, "-p", str(port), "-i", "127.0.0.1", "-W", "-d", "3", "--", *argv])
        self.wait_port("ttyd", proc, port)
        self.ttyd_pid = proc.pid
        return port

    def hang_up_ttyd_shells(self) -> None:
        """ttyd signals its child's process group when a socket closes; as with terminado, that group is runuser's
        alone (the interactive bash moved to a group of its own), so the shells would outlive their sockets. SIGHUP
        every process of the kernel sessions ttyd started (its children lead them), as a hang-up would."""
        if self.ttyd_pid is None:
            return
        sids = set()
        for name in os.listdir("/proc"):
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except (OSError, ValueError):
                continue
            if name.isdigit() and int(fields[1]) == self.ttyd_pid:
                sids.add(int(fields[3]))
        sids.discard(self.ttyd_pid)
        self.started_sids |= sids
        for pid in live_pids(sids=sids):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGHUP)

    def start_ssm_plane(self, posix_user: str, argv: list[str]) -> None:
        """The STS/SSM stand-in and the Session Manager emulator, in one subprocess (tests/aws_control_plane.py)."""
        payload = {"issuer": self.issuer_url(), "region": SSM_REGION, "role": SSM_ROLE, "document": SSM_DOCUMENT,
                   "posix_user": posix_user, "argv": argv, "state_dir": str(self.tmp)}
        proc = self.start("ssm-plane", [self.python, "-c", SSM_PLANE, json.dumps(payload)])
        ready = self.tmp / "ssm-ready.json"
        deadline = time.monotonic() + 30
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the SSM stand-in did not start:\n{self.log_tail('ssm-plane')}")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        self.ssm_url, self.ssm_target, self.ssm_pid = info["url"], info["target"], proc.pid

    def ssm_summary(self) -> dict | None:
        """What the stand-in saw (written when it stops): emulator violations, calls, counters."""
        try:
            return json.loads((self.tmp / "ssm-summary.json").read_text())
        except (OSError, ValueError):
            return None

    def ssm_shell_sids(self) -> set[int]:
        try:
            return set(json.loads((self.tmp / "ssm-shells.json").read_text()))
        except (OSError, ValueError):
            return set()

    def clusterra_sids(self) -> set[int]:
        """Kernel sessions of the shells daphne started (their leader PIDs are in the database)."""
        db = self.tmp / "data" / "clusterra.sqlite3"
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
                rows = conn.execute("SELECT backend_session_id FROM terminal_terminalsession").fetchall()
        except sqlite3.Error:
            return set()
        return {int(r[0]) for r in rows if r[0] and r[0].isdigit()}

    def stop(self) -> list[str]:
        """Stop servers (SIGTERM to the group, SIGKILL after a grace period), then leftovers; returns warnings."""
        warnings = []
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    warnings.append(f"{name} ignored SIGTERM for 10 s; killed")
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # anything left in its process group
        self.ssm_final = self.ssm_summary()
        sids = self.started_sids | self.clusterra_sids() | self.ssm_shell_sids()
        deadline = time.monotonic() + 3
        while sids and live_pids(sids=sids) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = kill_sessions(sids)
        if left:
            warnings.append(f"{left} shell process(es) outlived their session and were killed")
        if not self.args.keep_data:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return warnings


# --- scenarios -------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args, servers: Servers, posix_user: str, uid: int, argv: list[str]):
        self.args = args
        self.servers = servers
        self.posix_user, self.uid, self.argv = posix_user, uid, argv
        self.dedicated_user = os.geteuid() == 0 and posix_user == BENCH_USER
        self.cookie = ""
        self.daphne_port = self.terminado_port = self.ttyd_port = 0
        self.results: dict = {"echo": {}, "bulk": {}, "ctrlc": {}, "idle": {}}
        self.errors: list[str] = []
        self.failed: set[tuple] = set()
        self.notes: list[str] = []
        self.clusterra_connected: dict = {}
        self.current = ""
        self.nodelay: dict[str, bool | None] = {}

    def relay_pid(self, target: str) -> int | None:
        return {"clusterra": self.servers.daphne_pid, "clusterra-ssm": self.servers.daphne_pid,
                "terminado": self.servers.terminado_pid, "ttyd": self.servers.ttyd_pid}.get(target)

    def agent_pid(self, target: str) -> int | None:
        """The process on the far side of the relay, when it is ours: the SSM emulator (MGS + agent)."""
        return self.servers.ssm_pid if target == "clusterra-ssm" else None

    def new_session(self, target: str) -> Session:
        if target == "raw":
            return RawSession(self.argv, self.servers.started_sids)
        if target == "terminado":
            return TerminadoSession(self.terminado_port)
        if target == "ttyd":
            return TtydSession(self.ttyd_port)
        session = ClusterraSession(self.daphne_port, self.cookie, *((SSM_CLUSTER, target) if target == "clusterra-ssm" else ()))
        session.ack_delay = self.args.ack_delay
        return session

    async def open_sessions(self, target: str, n: int) -> list[Session]:
        sessions = [self.new_session(target) for _ in range(n)]
        gate = asyncio.Semaphore(OPEN_CONCURRENCY)

        async def prepare(s: Session):
            async with gate:
                await s.prepare()

        results = await asyncio.gather(*(prepare(s) for s in sessions), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self.close_sessions(sessions)
            raise BenchError(f"{target}: {len(failures)} of {n} sessions failed to open: {failures[0]}")
        for s in sessions:
            if isinstance(s, _WsSession) and target not in self.nodelay:
                self.nodelay[target] = s.nodelay
            if isinstance(s, ClusterraSession) and not self.clusterra_connected:
                self.clusterra_connected = next(x for x in s.statuses if x.get("type") == "connected")
        return sessions

    async def close_sessions(self, sessions: list[Session]) -> None:
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        if any(s.target == "ttyd" for s in sessions):
            self.servers.hang_up_ttyd_shells()
        await self.settle(max(20.0, 0.1 * len(sessions)))  # ending a thousand shells takes a while

    async def settle(self, timeout: float = 20) -> None:
        """Wait until the shells of the previous scenario are gone, so they don't skew the next one."""
        if not self.dedicated_user:
            await asyncio.sleep(1)
            return
        deadline = time.monotonic() + timeout
        while pids := live_pids(uid=self.uid):
            if time.monotonic() > deadline:
                names = sorted({process_name(pid) for pid in pids})
                self.notes.append(f"{len(pids)} {self.posix_user} process(es) ({', '.join(names)}) were still running "
                                  f"{timeout:.0f} s after {self.current} ended")
                return
            await asyncio.sleep(0.1)

    # --- echo ---
    async def echo(self, target: str, n: int) -> dict:
        args = self.args
        sessions = await self.open_sessions(target, n)
        try:
            await asyncio.gather(*(s.expect_after(START_CAT, CAT_STARTED, SHELL_READY_TIMEOUT, "`cat` starting")
                                   for s in sessions))
            await asyncio.sleep(0.2)
            interval = int(1e9 / args.rate)
            count = int((args.warmup + args.duration) * args.rate)
            start = now_ns() + 100_000_000
            measure_from = start + int(args.warmup * 1e9)
            probes = [EchoProbe(measure_from) for _ in sessions]
            for s, p in zip(sessions, probes, strict=True):
                s.handler = p.feed
            lags: list[int] = []
            relay, agent = self.relay_pid(target), self.agent_pid(target)
            cpu0, client0, wall0, agent0 = None, None, None, None

            async def mark_start():
                nonlocal cpu0, client0, wall0, agent0
                await asyncio.sleep(max(0, (measure_from - now_ns()) / 1e9))
                cpu0, client0, wall0, agent0 = cpu_seconds(relay), time.process_time(), time.monotonic(), cpu_seconds(agent)
                if args.py_spy and target in CLUSTERRA_TARGETS and n == max(args.sessions):
                    self.profile(relay, f"{target}-echo-{n}")

            marker = asyncio.create_task(mark_start())
            cpu_all0 = cpu_seconds(relay)  # CPU per keystroke: all keys, from the first until every echo is back
            await asyncio.gather(*(
                typist(s, p, start + i * interval // n, interval, count, measure_from, lags)
                for i, (s, p) in enumerate(zip(sessions, probes, strict=True))
            ))
            cpu1, client1, wall1, agent1 = cpu_seconds(relay), time.process_time(), time.monotonic(), cpu_seconds(agent)
            await marker
            deadline = time.monotonic() + args.drain
            while any(p.pending for p in probes) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            cpu_all1 = cpu_seconds(relay)
            lost = sum(len(p.pending) for p in probes)
            extra = sum(p.extra for p in probes)
            closed = [s for s in sessions if s.closed.is_set()]
            rss = rss_mb(relay)
        finally:
            await self.close_sessions(sessions)
        if closed:
            raise BenchError(f"{target}: {len(closed)} session(s) ended during the echo test ({closed[0].close_reason})")
        if lost or extra:
            raise BenchError(f"{target}: {lost} echo(es) missing after {args.drain:.0f} s, {extra} unexpected")
        samples = sorted(x for p in probes for x in p.samples)
        lags.sort()
        if not samples:
            raise BenchError(f"{target}: no echo samples")
        wall = wall1 - wall0
        return {
            "sessions": n, "samples": len(samples),
            "p50_ms": percentile(samples, 50) / 1e6, "p95_ms": percentile(samples, 95) / 1e6,
            "p99_ms": percentile(samples, 99) / 1e6, "max_ms": samples[-1] / 1e6,
            "send_lag_p50_ms": percentile(lags, 50) / 1e6 if lags else 0.0, "send_lag_p99_ms": percentile(lags, 99) / 1e6 if lags else 0.0, "send_lag_max_ms": lags[-1] / 1e6 if lags else 0.0,
            "relay_cpu_pct": None if cpu0 is None or cpu1 is None else 100 * (cpu1 - cpu0) / wall,
            # Independent of how busy the machine is (the percentage is not, once the relay falls behind).
            "relay_cpu_us_per_key": None if cpu_all0 is None or cpu_all1 is None else 1e6 * (cpu_all1 - cpu_all0) / (count * n),
            "client_cpu_pct": 100 * (client1 - client0) / wall, "relay_rss_mb": rss,
            "agent_cpu_pct": None if agent0 is None or agent1 is None else 100 * (agent1 - agent0) / wall,
        }

    # --- idle ---
    async def idle(self, target: str, n: int) -> dict:
        """`n` sessions at their prompt, nobody typing: what the relay spends on them (CPU, wake-ups) and holds
        (RSS per session). The RSS baseline is taken after one session has come and gone (code loaded, caches
        warm), so the delta is what the sessions themselves hold."""
        relay = self.relay_pid(target)
        await self.close_sessions(await self.open_sessions(target, 1))
        await asyncio.sleep(1)
        rss0 = rss_mb(relay)
        t_open = time.monotonic()
        sessions = await self.open_sessions(target, n)
        opened_s = time.monotonic() - t_open
        try:
            await asyncio.sleep(self.args.idle_settle)  # login output acked, start-up work done
            cpu0, switches0, client0, wall0 = cpu_seconds(relay), context_switches(relay), time.process_time(), time.monotonic()
            if self.args.py_spy and target in CLUSTERRA_TARGETS:
                self.profile(relay, f"{target}-idle-{n}", self.args.idle_duration, idle=True)
            await asyncio.sleep(self.args.idle_duration)
            cpu1, switches1, client1, wall1 = cpu_seconds(relay), context_switches(relay), time.process_time(), time.monotonic()
            rss1 = rss_mb(relay)
            closed = [s for s in sessions if s.closed.is_set()]
        finally:
            await self.close_sessions(sessions)
        if closed:
            raise BenchError(f"{target}: {len(closed)} of {n} idle session(s) ended ({closed[0].close_reason})")
        wall = wall1 - wall0
        return {
            "sessions": n, "open_s": opened_s, "measured_s": wall,
            "relay_cpu_pct": None if cpu0 is None or cpu1 is None else 100 * (cpu1 - cpu0) / wall,
            "relay_wakeups_per_s": None if switches0 is None or switches1 is None else (switches1 - switches0) / wall,
            "client_cpu_pct": 100 * (client1 - client0) / wall,
            "rss_before_mb": rss0, "rss_after_mb": rss1,
            "rss_per_session_kb": None if rss0 is None or rss1 is None else (rss1 - rss0) * 1024 / n,
        }

    def profile(self, pid: int, name: str, duration: float | None = None, idle: bool = False) -> None:
        """py-spy (pip install py-spy; root) samples the relay during the measured phase; collapsed stacks (for
        flamegraph.pl or speedscope) go to --py-spy DIR. With `idle`, idle samples count too."""
        out = Path(self.args.py_spy) / f"{name}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [shutil.which("py-spy") or "py-spy", "record", "--pid", str(pid), "--duration", str(int(duration or self.args.duration)),
                "--rate", "200", "--format", "raw", "--nonblocking", "--output", str(out), *(["--idle"] if idle else [])]
        log = open(out.with_suffix(".log"), "wb")  # noqa: SIM115
        subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        self.notes.append(f"py-spy profile of {name}: {out}")

    # --- bulk ---
    def bulk_producer(self) -> str:
        """The command that prints the bulk output: base64 on the fly (producer-heavy, as in the
        reference runs), or `cat` of the same text from a file (a cheap producer, so the relay is what
        is measured)."""
        if self.args.bulk_producer == "base64":
            return f"head -c {self.args.bulk_mib}M /dev/zero | base64 -w 120"
        if getattr(self, "_bulk_file", None) is None:
            fd, path = tempfile.mkstemp(prefix="clusterra-bench-bulk-", suffix=".txt")
            with os.fdopen(fd, "wb") as f:
                line = b"A" * 120 + b"\n"
                size = self.args.bulk_mib * 2**20 * 4 // 3
                f.write(line * (size // len(line)) + b"A" * (size % len(line)) + b"\n")
            os.chmod(path, 0o644)
            atexit.register(lambda: os.path.exists(path) and os.unlink(path))
            self._bulk_file = path
        return f"cat {self._bulk_file}"

    async def bulk(self, target: str) -> dict:
        (session,) = await self.open_sessions(target, 1)
        relay, agent = self.relay_pid(target), self.agent_pid(target)
        try:
            probe = BulkProbe()
            session.handler = probe.feed
            cpu0, client0, agent0 = cpu_seconds(relay), time.process_time(), cpu_seconds(agent)
            await session.send(f"{self.bulk_producer()}; echo __E''ND__\n".encode())
            try:
                await asyncio.wait_for(probe.done.wait(), self.args.bulk_timeout)
            except TimeoutError:
                got = probe.bytes / 1e6
                raise BenchError(f"{target}: bulk output not finished within {self.args.bulk_timeout:.0f} s "
                                 f"({got:.1f} MB received; {session.close_reason or 'session open'})") from None
            cpu1, client1, agent1 = cpu_seconds(relay), time.process_time(), cpu_seconds(agent)
            await probe.prompt.wait(SHELL_READY_TIMEOUT, "the prompt after the bulk output", session)
        finally:
            await self.close_sessions([session])
        seconds = (probe.end - probe.start) / 1e9
        expected = self.args.bulk_mib * 2**20 * 4 / 3
        if probe.bytes < expected:
            raise BenchError(f"{target}: bulk output short: {probe.bytes} bytes, expected at least {expected:.0f}")
        return {
            "bytes": probe.bytes, "seconds": seconds, "mb_per_s": probe.bytes / seconds / 1e6,
            "relay_cpu_pct": None if cpu0 is None or cpu1 is None else 100 * (cpu1 - cpu0) / seconds,
            "client_cpu_pct": 100 * (client1 - client0) / seconds,
            "agent_cpu_pct": None if agent0 is None or agent1 is None else 100 * (agent1 - agent0) / seconds,
        }

    # --- ctrl-c ---
    async def ctrlc(self, target: str) -> dict:
        (session,) = await self.open_sessions(target, 1)
        try:
            await session.expect_after(b"echo __Y''ES__; yes\n", b"__YES__", SHELL_READY_TIMEOUT, "`yes` starting")
            received_before = session.rx_bytes
            await asyncio.sleep(self.args.ctrlc_after)
            yes_bytes = session.rx_bytes - received_before
            sent = now_ns()
            found = await session.expect_after(b"\x03", PROMPT, CTRLC_TIMEOUT, "the prompt after ^C")
            after = session.rx_bytes - received_before - yes_bytes
        finally:
            await self.close_sessions([session])
        return {"ms": (found - sent) / 1e6, "bytes_after_interrupt": after,
                "yes_mb_per_s": yes_bytes / self.args.ctrlc_after / 1e6}

    # --- all ---
    async def run(self) -> None:
        args = self.args
        plan = [("echo", n, t) for n in args.sessions for t in args.targets] if "echo" in args.scenarios else []
        # Bulk and Ctrl-C are short and noisy: several runs, targets interleaved, median reported.
        plan += [("bulk", r, t) for r in range(args.runs) for t in args.targets if "bulk" in args.scenarios]
        plan += [("ctrlc", r, t) for r in range(args.runs) for t in args.targets if "ctrlc" in args.scenarios]
        plan += [("idle", args.idle, t) for t in args.targets if "idle" in args.scenarios and t != "raw"]
        runs: dict[tuple, list[dict]] = {}
        for kind, n, target in plan:
            label = {"echo": f"echo, {n} session(s)", "bulk": f"bulk output, run {(n or 0) + 1}",
                     "ctrlc": f"Ctrl-C, run {(n or 0) + 1}", "idle": f"{n} idle sessions"}[kind] + f" on {target}"
            print(f"  … {label}", file=sys.stderr, flush=True)
            self.current = label
            scenario = {"echo": lambda t=target, k=n: self.echo(t, k), "bulk": lambda t=target: self.bulk(t),
                        "ctrlc": lambda t=target: self.ctrlc(t), "idle": lambda t=target, k=n: self.idle(t, k)}[kind]
            t0 = time.monotonic()
            # Opening (and closing) a thousand shells takes a while on 2 cores.
            timeout = args.scenario_timeout + (n * 0.5 + args.idle_duration if kind == "idle" else 0)
            try:
                result = await asyncio.wait_for(scenario(), timeout)
            except (TimeoutError, BenchError) as exc:
                self.failed.add((kind, n if kind in ("echo", "idle") else None, target))
                self.errors.append(f"{label}: " + (str(exc) or f"exceeded {args.scenario_timeout:.0f} s"))
                await self.settle()
                continue
            result["elapsed_s"] = round(time.monotonic() - t0, 1)
            if kind == "echo":
                self.results["echo"].setdefault(n, {})[target] = result
            elif kind == "idle":
                self.results["idle"][target] = result
            else:
                runs.setdefault((kind, target), []).append(result)
        for (kind, target), results in runs.items():
            if (kind, None, target) in self.failed:
                continue
            summary = {key: statistics.median(r[key] for r in results)
                       for key in results[0] if all(isinstance(r.get(key), (int, float)) for r in results)}
            summary["runs"] = results
            self.results[kind][target] = summary


class EchoProbe:
    """Pairs the i-th echoed KEY with the i-th KEY sent (the tty echoes in order)."""

    def __init__(self, measure_from: int):
        self.measure_from = measure_from
        self.pending: deque[int] = deque()
        self.samples: list[int] = []
        self.extra = 0

    def feed(self, data: bytes, t: int) -> None:
        for _ in range(data.count(KEY)):
            if not self.pending:
                self.extra += 1
                continue
            intended = self.pending.popleft()
            if intended >= self.measure_from:
                self.samples.append(t - intended)


class BulkProbe:
    FIRST = b"AAAA"  # base64 of zeros; the typed command line does not contain it

    def __init__(self):
        self.start: int | None = None
        self.end: int | None = None
        self.bytes = 0
        self.end_matcher = Matcher(END_MARK)
        self.prompt = Matcher(PROMPT)  # the base64 text never contains it
        self.done = asyncio.Event()

    def feed(self, data: bytes, t: int) -> None:
        if self.start is None:
            at = data.find(self.FIRST)
            if at < 0:
                return
            self.start = t
            data = data[at:]
        self.prompt.feed(data, t)
        if self.end is not None:
            return
        self.bytes += len(data)
        if self.end_matcher.feed(data, t):
            self.end = t
            self.done.set()


async def typist(session: Session, probe: EchoProbe, start: int, interval: int, count: int, measure_from: int,
                 lags: list[int]) -> None:
    for k in range(count):
        intended = start + k * interval
        while (delay := intended - now_ns()) > 0:
            await asyncio.sleep(delay / 1e9)
        if k % NEWLINE_EVERY == NEWLINE_EVERY - 1:
            await session.send(b"\r")
            continue
        probe.pending.append(intended)
        if intended >= measure_from:
            lags.append(now_ns() - intended)
        await session.send(KEY)


# --- report --------------------------------------------------------------------------------------
def report(bench: Bench, args) -> list[str]:
    res, targets = bench.results, args.targets
    pairs = [(label, a, b) for label, a, b in (("Clusterra/terminado", "clusterra", "terminado"),
                                              ("Clusterra/ttyd", "clusterra", "ttyd"),
                                              ("SSM/local", "clusterra-ssm", "clusterra"))
             if a in targets and b in targets]
    ssm = "clusterra-ssm" in targets
    head = ["scenario", *(TARGET_NAMES[t] for t in targets), *(label for label, _, _ in pairs)]
    rows: list[list[str]] = []

    def get(kind, target, n=None):
        return (res["echo"].get(n, {}) if kind == "echo" else res[kind]).get(target)

    def row(label, kind, show, n=None, compare=None):
        cells = []
        for t in targets:
            r = get(kind, t, n)
            value = show(r) if r is not None else None
            cells.append(("FAIL" if (kind, n, t) in bench.failed else "–") if value is None else value)
        for _, a, b in pairs:
            c, d = get(kind, a, n), get(kind, b, n)
            cells.append(compare(c, d) if compare and c and d and compare(c, d) else "")
        rows.append([label, *cells])

    def num(key, spec, scale=1.0):
        return lambda r: None if r.get(key) is None else format(r[key] * scale, spec)

    def spread(key, spec):
        """The median, and the range when there were several runs."""
        def show(r):
            values = [x[key] for x in r.get("runs", [])]
            extra = f" ({min(values):{spec}}–{max(values):{spec}})" if len(values) > 1 else ""
            return f"{r[key]:{spec}}{extra}"
        return show

    def ratio(key, prefix=""):
        return lambda c, d: f"{prefix}{c[key] / d[key]:.2f}×" if d[key] else ""

    for n in args.sessions if "echo" in args.scenarios else []:
        row(f"echo p50 / p99 / max ms, {n} session{'s' if n > 1 else ''} ({n * args.rate:g} keys/s)", "echo",
            lambda r: f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f} / {r['max_ms']:.1f}", n, ratio("p99_ms", "p99 "))
    if args.sessions and "echo" in args.scenarios:
        n = max(args.sessions)
        row(f"  relay CPU % of a core, {n} sessions", "echo", num("relay_cpu_pct", ".0f"), n, ratio("relay_cpu_pct", "CPU "))
        row(f"  relay CPU µs per keystroke (echo and acks included), {n} sessions", "echo", num("relay_cpu_us_per_key", ".0f"),
            n, ratio("relay_cpu_us_per_key", "CPU "))
        row(f"  relay RSS MB, {n} sessions", "echo", num("relay_rss_mb", ".0f"), n, ratio("relay_rss_mb", "RSS "))
        if ssm:
            row(f"  SSM emulator (MGS + agent) CPU % of a core, {n} sessions", "echo", num("agent_cpu_pct", ".0f"), n)
        row(f"  client: CPU % / send lag p50, p99 ms, {n} sessions", "echo",
            lambda r: f"{r['client_cpu_pct']:.0f} / {r['send_lag_p50_ms']:.2f}, {r['send_lag_p99_ms']:.2f}", n)
    runs = f", median of {args.runs}" if args.runs > 1 else ""
    if "bulk" in args.scenarios:
        bulk_rows(row, num, spread, ratio, args, runs, ssm)
    if "ctrlc" in args.scenarios:
        row(f"Ctrl-C → prompt ms, after {args.ctrlc_after:g} s of `yes`, fast client{runs}", "ctrlc", spread("ms", ".1f"),
            compare=ratio("ms"))
        row("  output received after ^C, KB", "ctrlc", num("bytes_after_interrupt", ",.0f", 1e-3))
    if "idle" in args.scenarios:
        n = args.idle
        row(f"{n} idle sessions: relay CPU % of a core ({args.idle_duration:g} s)", "idle", num("relay_cpu_pct", ".2f"), n,
            ratio("relay_cpu_pct", "CPU "))
        row("  relay wake-ups per second (voluntary context switches)", "idle", num("relay_wakeups_per_s", ".1f"), n)
        row("  relay RSS MB before → with the sessions", "idle", lambda r: f"{r['rss_before_mb']:.0f} → {r['rss_after_mb']:.0f}", n)
        row("  relay memory per session, KB (RSS delta / sessions)", "idle", num("rss_per_session_kb", ".0f"), n,
            ratio("rss_per_session_kb", "RSS "))
        row("  seconds to open them (10 at a time)", "idle", num("open_s", ".0f"), n)

    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))  # noqa: E731
    return [line(head), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def bulk_rows(row, num, spread, ratio, args, runs: str, ssm: bool) -> None:
    producer = "base64" if args.bulk_producer == "base64" else "cat of a file"
    row(f"bulk output MB/s, one session ({args.bulk_mib} MiB → {producer}{runs})", "bulk", spread("mb_per_s", ".1f"),
        compare=ratio("mb_per_s"))
    row("  relay CPU % of a core", "bulk", num("relay_cpu_pct", ".0f"))
    if ssm:
        row("  SSM emulator (MGS + agent) CPU % of a core", "bulk", num("agent_cpu_pct", ".0f"))
    row("  client CPU % of a core", "bulk", num("client_cpu_pct", ".0f"))


def targets_check(bench: Bench, args) -> list[tuple[str, str]]:
    res = bench.results
    checks = []
    r = res["echo"].get(100, {}).get("clusterra")
    if r is None:
        checks.append(("n/a", "Clusterra echo p99 < 10 ms at 100 concurrent sessions (not measured)"))
    else:
        checks.append(("PASS" if r["p99_ms"] < 10 else "MISS", f"Clusterra echo p99 < 10 ms at 100 sessions: {r['p99_ms']:.2f} ms"))
    if r is not None:
        t, y = res["echo"][100].get("terminado"), res["echo"][100].get("ttyd")
        if t is not None and r["relay_cpu_pct"] is not None and t["relay_cpu_pct"] is not None:
            ok = r["relay_cpu_pct"] <= t["relay_cpu_pct"]
            checks.append(("PASS" if ok else "MISS", f"Clusterra relay CPU ≤ terminado's at 100 sessions: "
                           f"{r['relay_cpu_pct']:.0f} % vs {t['relay_cpu_pct']:.0f} % of a core "
                           f"({r['relay_cpu_pct'] / max(t['relay_cpu_pct'], 0.01):.2f}×)"))
        if y is not None:
            ratio = r["p99_ms"] / y["p99_ms"]
            checks.append(("PASS" if ratio <= 1.5 else "MISS", f"Clusterra echo p99 ≤ 1.5× ttyd's at 100 sessions: "
                           f"{r['p99_ms']:.2f} vs {y['p99_ms']:.2f} ms ({ratio:.2f}×)"))
    i = res["idle"].get("clusterra")
    if i is not None and i["relay_cpu_pct"] is not None:
        checks.append(("PASS" if i["relay_cpu_pct"] < 5 else "MISS", f"Clusterra with {i['sessions']} idle sessions under 5 % of "
                       f"a core: {i['relay_cpu_pct']:.2f} %, {i['rss_per_session_kb']:.0f} KB per session"))
    c, d = res["bulk"].get("clusterra"), res["bulk"].get("terminado")
    if c is None or d is None:
        checks.append(("n/a", "Clusterra throughput ≥ 2× terminado (not measured)"))
    else:
        ratio = c["mb_per_s"] / d["mb_per_s"]
        checks.append(("PASS" if ratio >= 2 else "MISS", f"Clusterra throughput ≥ 2× terminado: {ratio:.2f}× "
                                                         f"({c['mb_per_s']:.1f} vs {d['mb_per_s']:.1f} MB/s)"))
    return checks


# --- main ----------------------------------------------------------------------------------------
def shell_argv(entry: pwd.struct_passwd) -> list[str]:
    """The command line the local PTY backend runs (terminal/backends/local_pty.py), without `setsid -c`."""
    shell = entry.pw_shell or "/bin/sh"
    env = [
        "TERM=xterm-256color", f"LANG={os.environ.get('CLUSTERRA_TERMINAL_LANG', 'C.UTF-8')}", f"HOME={entry.pw_dir}",
        f"USER={entry.pw_name}", f"LOGNAME={entry.pw_name}", f"SHELL={shell}",
        f"PATH={os.environ.get('CLUSTERRA_TERMINAL_PATH', '/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin')}",
    ]
    script = 'cd -- "$1" || exit 97; exec "$SHELL" -l'
    switch = [] if os.geteuid() == entry.pw_uid else ["runuser", "-u", entry.pw_name, "--"]
    return [*switch, "env", "-i", *env, "/bin/sh", "-c", script, "sh", entry.pw_dir]


def posix_account() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam(BENCH_USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", BENCH_USER], check=True, timeout=60)
        return pwd.getpwnam(BENCH_USER)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10, help="measured seconds per echo scenario (default 10)")
    p.add_argument("--ack-delay", type=float, default=ACK_DELAY,
                   help=f"Clusterra client: seconds before acking output below the threshold (default {ACK_DELAY:g}, the browser's)")
    p.add_argument("--drain", type=float, default=5, help="seconds the echo scenario waits for late echoes (default 5)")
    p.add_argument("--warmup", type=float, default=2, help="unmeasured seconds before that (default 2)")
    p.add_argument("--rate", type=float, default=10, help="keys per second per session (default 10)")
    p.add_argument("--sessions", default="1,10,100", help="concurrent sessions for the echo scenarios (default 1,10,100)")
    p.add_argument("--bulk-producer", choices=("base64", "file"), default="base64",
                   help="base64: `head -c N /dev/zero | base64` (default); file: `cat` the same text from a file")
    p.add_argument("--bulk-mib", type=int, default=64, help="MiB of zeros base64-encoded in the bulk scenario (default 64)")
    p.add_argument("--bulk-timeout", type=float, default=180, help="seconds the bulk output may take (default 180)")
    p.add_argument("--runs", type=int, default=3, help="runs of the bulk and Ctrl-C scenarios; the median is reported (default 3)")
    p.add_argument("--ctrlc-after", type=float, default=2, help="seconds `yes` runs before ^C (default 2)")
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                   help=f"any of {','.join(ALL_TARGETS)} (default {','.join(DEFAULT_TARGETS)})")
    p.add_argument("--ttyd", metavar="PATH", help="the ttyd binary (default: ttyd on PATH)")
    p.add_argument("--scenarios", default="echo,bulk,ctrlc", help="any of echo,bulk,ctrlc,idle (default echo,bulk,ctrlc)")
    p.add_argument("--idle", type=int, default=1000, metavar="N",
                   help="idle scenario: hold N sessions at their prompt and measure the relay's CPU and RSS per session (default 1000)")
    p.add_argument("--idle-settle", type=float, default=5, help="seconds between opening the idle sessions and measuring")
    p.add_argument("--idle-duration", type=float, default=30, help="measured seconds of the idle scenario (default 30)")
    p.add_argument("--scenario-timeout", type=float, default=300, help="upper bound for any one scenario (default 300 s)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--py-spy", metavar="DIR", help="profile daphne with py-spy during the largest echo scenario; "
                   "collapsed stacks go to DIR")
    p.add_argument("--keep-data", action="store_true", help="keep the temporary data directory (logs, database, recordings)")
    args = p.parse_args(argv)
    try:
        args.sessions = [int(x) for x in args.sessions.split(",") if x.strip()]
    except ValueError:
        p.error("--sessions takes comma-separated whole numbers")
    if any(n < 1 for n in args.sessions):
        p.error("--sessions values must be at least 1")
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    args.scenarios = [t.strip() for t in args.scenarios.split(",") if t.strip()]
    if not args.scenarios or any(t not in ("echo", "bulk", "ctrlc", "idle") for t in args.scenarios):
        p.error("--scenarios takes a comma-separated subset of echo,bulk,ctrlc,idle")
    if args.idle < 1 or args.idle_duration <= 0 or args.idle_settle < 0:
        p.error("--idle, --idle-duration must be positive")
    if not args.targets or any(t not in ALL_TARGETS for t in args.targets):
        p.error(f"--targets takes a comma-separated subset of {','.join(ALL_TARGETS)}")
    if args.duration <= 0 or args.warmup < 0 or args.rate <= 0 or args.bulk_mib < 1 or args.ctrlc_after <= 0 or args.runs < 1:
        p.error("durations, rate and sizes must be positive")
    return args


def carry_niceness(pid: int) -> None:
    """Under `nice -n -15` (bench/README.md), give the autogroup of `pid` that niceness too. With autogroups on
    (Linux's default for desktops and many VMs), a process's nice value only counts inside its kernel session's
    group, and every group gets an equal share of the CPUs: the servers run in sessions of their own, so on a busy
    machine they would get no more CPU than any other group whatever their nice value."""
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    if nice < 0:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/autogroup").write_text(str(nice))


def max_sessions(args) -> int:
    return max([*(args.sessions if "echo" in args.scenarios else []), args.idle if "idle" in args.scenarios else 0, 1])


def raise_limits(sessions: int) -> None:
    """What many sessions need, for this process and the servers it starts (they inherit the limits): per session
    the client holds a socket; the relay a socket, a PTY master, a pidfd and a recording file; the shells' user a
    few processes. Soft limits go up to the hard ones (root may raise those); the kernel's PTY maximum is checked."""
    import resource

    need_files = 8 * sessions + 1024
    for limit, need in ((resource.RLIMIT_NOFILE, need_files), (resource.RLIMIT_NPROC, 4 * sessions + 4096)):
        soft, hard = resource.getrlimit(limit)
        if soft != resource.RLIM_INFINITY and soft < need:
            if hard != resource.RLIM_INFINITY and hard < need and os.geteuid() == 0:
                hard = need
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(limit, (min(need, hard) if hard != resource.RLIM_INFINITY else need, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need_files:
        raise BenchError(f"{sessions} sessions need about {need_files} open files; the limit is {soft} (ulimit -n)")
    with contextlib.suppress(OSError, ValueError):
        pty_max = int(Path("/proc/sys/kernel/pty/max").read_text())
        pty_used = int(Path("/proc/sys/kernel/pty/nr").read_text())
        if pty_max - pty_used < 2 * sessions:  # the relay's targets and any other terminals on the machine
            if os.geteuid() != 0:
                raise BenchError(f"{sessions} sessions need PTYs: {pty_used} of {pty_max} in use (/proc/sys/kernel/pty/max)")
            Path("/proc/sys/kernel/pty/max").write_text(str(pty_used + 2 * sessions + 1024))


def run_with_precise_timers(coro, sessions: int):
    """Run `coro` on a loop whose timers fire within tens of µs, not a millisecond late.

    epoll's timeout is in whole milliseconds (CPython rounds up), so keystrokes scheduled with the default
    loop leave 0.5–1.5 ms late and that lateness would count as echo latency. select() takes microseconds;
    a timer slack of 1 ns stops the kernel from batching the wake-ups. select() handles fds < 1024, so
    very large runs keep epoll.
    """
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK
    selector = selectors.SelectSelector() if sessions <= 400 else selectors.DefaultSelector()
    with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(selector)) as runner:
        return runner.run(coro)


def clusterra_settings(bench: Bench) -> str:
    status = bench.clusterra_connected
    window = f"ack window HIGH/LOW {status['high_watermark']}/{status['low_watermark']} bytes; " if status else ""
    overrides = ", ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("CLUSTERRA_TERMINAL_"))
    return f"Clusterra: {window}{'environment: ' + overrides if overrides else 'default terminal settings'}"


def ssm_report(bench: Bench, summary: dict | None, env_info: dict) -> None:
    """What the SSM stand-in and emulator saw: protocol violations fail the run; the rest is a note."""
    if summary is None:
        bench.errors.append("clusterra-ssm: the SSM stand-in wrote no summary (it did not stop cleanly?):\n"
                            + env_info.get("ssm_plane_log_tail", ""))
        return
    env_info["ssm"] = summary
    if summary["violation_count"]:
        bench.errors.append(f"clusterra-ssm: the emulator recorded {summary['violation_count']} data-channel protocol "
                            f"violation(s), e.g. {summary['violations'][:3]}")
    calls = ", ".join(f"{k} ×{v}" for k, v in sorted(summary["calls"].items()))
    bench.notes.append(f"SSM stand-in: {calls}; emulator: {summary['sessions']} sessions, "
                       f"{summary['violation_count']} protocol violations, {summary['output_messages']:,} output messages, "
                       f"{summary['output_resends']:,} resent, {summary['input_resends']:,} input resends")


def _interrupt(signum, frame):
    os.kill(os.getpid(), signal.SIGINT)  # SIGTERM ends the run like Ctrl-C: scenarios clean up, servers stop


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    python = os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO) + os.sep) else sys.executable
    script = os.path.relpath(os.path.abspath(sys.argv[0]), REPO)
    command = f"cd {shlex.quote(str(REPO))} && {shlex.join([python, script, *sys.argv[1:]])}"
    entry = posix_account()
    env_info = {
        "cpu": cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release(),
        "websockets": websockets.version.version, "command": command, "posix_user": entry.pw_name, "uid": entry.pw_uid,
    }
    for module in ("daphne", "channels", "django", "terminado", "tornado"):
        with contextlib.suppress(Exception):
            mod = __import__(module)
            env_info[module] = getattr(mod, "__version__", getattr(mod, "version", "?"))
    if "ttyd" in args.targets and (binary := args.ttyd or shutil.which("ttyd")):
        with contextlib.suppress(Exception):
            env_info["ttyd"] = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout.split()[-1]
    servers = Servers(args)
    bench = None
    interrupted = False
    uses_daphne = any(t in args.targets for t in CLUSTERRA_TARGETS)
    warnings: list[str] = []
    try:
        print(f"data directory {servers.tmp}; shell user {entry.pw_name} (uid {entry.pw_uid})", file=sys.stderr)
        raise_limits(max_sessions(args))  # before the servers start: they inherit the limits
        carry_niceness(os.getpid())
        argv_shell = shell_argv(entry)
        bench = Bench(args, servers, entry.pw_name, entry.pw_uid, argv_shell)
        if uses_daphne:
            print("  … set-up: migrate, tenant, cluster, user, session; daphne", file=sys.stderr, flush=True)
            if os.geteuid() != 0 and entry.pw_uid < 1000:
                os.environ["CLUSTERRA_TERMINAL_MIN_UID"] = str(max(1, entry.pw_uid))
            if "clusterra-ssm" in args.targets:
                print("  … set-up: SSM control-plane stand-in + Session Manager emulator", file=sys.stderr, flush=True)
                servers.start_ssm_plane(entry.pw_name, argv_shell)
            bench.cookie = servers.setup_clusterra(entry.pw_name, entry.pw_uid)
            bench.daphne_port = servers.start_daphne()
        if "terminado" in args.targets:
            bench.terminado_port = servers.start_terminado(argv_shell)
        if "ttyd" in args.targets:
            bench.ttyd_port = servers.start_ttyd(argv_shell)
        run_with_precise_timers(bench.run(), max_sessions(args))
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted; cleaning up", file=sys.stderr)
    except BenchError as exc:
        if bench is None:
            raise
        bench.errors.append(str(exc))
    finally:
        if bench is not None and uses_daphne:
            env_info["daphne_log_tail"] = servers.log_tail("daphne", 20)
        if bench is not None and "clusterra-ssm" in args.targets:
            env_info["ssm_plane_log_tail"] = servers.log_tail("ssm-plane", 20)
        warnings = servers.stop()
    if bench is not None and "clusterra-ssm" in args.targets:
        ssm_report(bench, servers.ssm_final, env_info)
    if interrupted or bench is None:
        return 130

    lines = [
        f"Clusterra terminal benchmark — {time.strftime('%Y-%m-%d %H:%M:%S')}",
        f"CPU: {env_info['cpu']} × {env_info['cpus']}; Python {env_info['python']}; Linux {env_info['kernel']}; "
        f"daphne {env_info.get('daphne', '?')}, channels {env_info.get('channels', '?')}, Django {env_info.get('django', '?')}, "
        f"terminado {env_info.get('terminado', '?')} (Tornado {env_info.get('tornado', '?')}), "
        + (f"ttyd {env_info.get('ttyd', '?')}, " if "ttyd" in args.targets else "")
        + f"websockets {env_info['websockets']} client; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"Shell: {entry.pw_name} (uid {entry.pw_uid}), {entry.pw_shell} -l on a {COLS}x{ROWS} PTY; client TCP_NODELAY "
        + ", ".join(f"{TARGET_NAMES[t]} {v}" for t, v in bench.nodelay.items()),
        clusterra_settings(bench),
        *(["Clusterra SSM: the same daphne, cluster backend 'ssm'; STS + SSM = tests/aws_control_plane.py, data channel "
           "to tests/ssm_emulator.py (handshake on, one ack per message), both in one helper process"]
          if "clusterra-ssm" in args.targets else []),
        f"Echo: {args.rate:g} keys/s per session on a fixed schedule, {args.warmup:g} s warm-up + {args.duration:g} s measured, "
        "latency from the intended send time; one asyncio client process",
        "",
        *report(bench, args),
        "",
    ]
    for status, text in targets_check(bench, args):
        lines.append(f"target {status}: {text}")
    n = max(args.sessions) if args.sessions else None
    for t in args.targets:
        r = bench.results["echo"].get(n, {}).get(t) if n else None
        if r and (r["send_lag_p99_ms"] > 1 or r["client_cpu_pct"] > 80):
            bench.notes.append(f"{TARGET_NAMES[t]} echo at {n}: the client was busy (send lag p99 {r['send_lag_p99_ms']:.2f} ms, "
                               f"client CPU {r['client_cpu_pct']:.0f} %); latencies include client delay")
        b = bench.results["bulk"].get(t)
        if b and b["client_cpu_pct"] > 85:
            bench.notes.append(f"{TARGET_NAMES[t]} bulk: the client used {b['client_cpu_pct']:.0f} % of a core; "
                               "it may be the bottleneck")
    if (os.cpu_count() or 0) <= 2:
        producer = "head|base64" if args.bulk_producer == "base64" else "cat"
        bench.notes.append(f"{os.cpu_count()} CPUs: the producer ({producer}), the relay and the client share them")
    for note in bench.notes + warnings:
        lines.append(f"note: {note}")
    for err in bench.errors:
        lines.append(f"FAILED: {err}")
    lines.append(f"reproduce: {command}")
    print("\n".join(lines))
    if args.json:
        payload = {"environment": env_info, "settings": {k: v for k, v in vars(args).items() if k != "json"},
                   "results": {**bench.results, "echo": {str(k): v for k, v in bench.results["echo"].items()}},
                   "targets": [{"status": s, "text": t} for s, t in targets_check(bench, args)],
                   "notes": bench.notes + warnings, "errors": bench.errors}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
