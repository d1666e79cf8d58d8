"""Several portal processes on the Redis channel layer: a process killed with SIGKILL, Redis restarted
under live sessions, idle terminals held past redis-py's read timeout, revocation that is never lost.

Real processes throughout: two daphne processes (tests/conftest.py run_daphne), a private redis-server
of this test's own (so that restarting it disturbs nothing else), real login shells.
"""

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
from datetime import timedelta

import pytest
from channels.layers import channel_layers
from django.utils import timezone
from prometheus_client import REGISTRY

from clusters.models import CredentialRevocation
from clusters.spawn import spawn_clean
from terminal.actions import open_terminal_session, revoke_terminal_sessions, user_group
from terminal.backends.local_pty import session_pids
from terminal.models import PortalProcess, TerminalSession
from terminal.processes import close_stale_sessions, reap_lost_processes
from terminal.recordings import open_recording
from tests.conftest import _free_port, run_daphne, stop_process, wait_for
from tests.multiprocess import LEASE, two_daphnes
from tests.terminal_client import WsTerminal, signed_in_cookie, ws_terminal

Reason = TerminalSession.EndReason


# --- the reaper, on rows and real processes ---------------------------------------------------------
def _process(lease_in: float, **fields) -> PortalProcess:
    import uuid

    return PortalProcess.objects.create(id=uuid.uuid4(), worker="9", hostname=socket.gethostname()[:255], pid=1,
                                        lease_until=timezone.now() + timedelta(seconds=lease_in), **fields)


def _session(cast, owner, *, sid: int | None = None, started_ago: float = 0) -> TerminalSession:
    session = open_terminal_session(user=cast.bob, tenant_slug="acme", cluster_slug="hpc", working_directory=None,
                                    client_address="127.0.0.1", user_agent="pytest", owner_id=owner.pk if owner else None)
    TerminalSession.objects.filter(pk=session.pk).update(
        backend_session_id=str(sid) if sid else "", started_at=timezone.now() - timedelta(seconds=started_ago))
    session.refresh_from_db()
    return session


def _spawn_kernel_session(argv: list[str]) -> int:
    """A process in a kernel session of its own, like a shell's session leader; returns its pid (= the sid)."""
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        return spawn_clean(argv, stdio=(devnull, devnull, devnull), env={"PATH": os.environ["PATH"]}, new_session=True)
    finally:
        os.close(devnull)


def _reap_child(pid: int):
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def test_lost_process_sessions_are_finished_and_their_shells_killed(cast):
    lost, alive = _process(-1), _process(+60)
    sid = _spawn_kernel_session(["sh", "-c", "sleep 1001 & sleep 1002"])
    wait_for(lambda: len(session_pids(sid)) >= 3, 10, "the session's processes")
    orphan, healthy = _session(cast, lost, sid=sid), _session(cast, alive)
    lost_before = REGISTRY.get_sample_value("clusterra_portal_processes_lost_total") or 0
    assert reap_lost_processes() == 1
    assert REGISTRY.get_sample_value("clusterra_portal_processes_lost_total") == lost_before + 1  # operators see it
    orphan.refresh_from_db(), healthy.refresh_from_db(), lost.refresh_from_db()
    assert orphan.end_reason == Reason.WORKER_LOST and "was lost" in orphan.end_message
    assert healthy.ended_at is None, "a session of a process with a current lease was touched"
    assert lost.end_reason == PortalProcess.EndReason.LEASE_EXPIRED
    _reap_child(sid)
    wait_for(lambda: session_pids(sid) == [], 5, "the orphaned shell's processes to die")
    assert reap_lost_processes() == 0  # idempotent
    assert close_stale_sessions() == 0 and TerminalSession.objects.get(pk=healthy.pk).ended_at is None


def test_a_reused_pid_is_not_killed(cast):
    lost = _process(-1)
    sid = _spawn_kernel_session(["sleep", "1003"])
    try:
        # The row says the shell started an hour ago: a session leader with that pid now is somebody else's.
        orphan = _session(cast, lost, sid=sid, started_ago=3600)
        reap_lost_processes()
        orphan.refresh_from_db()
        assert orphan.end_reason == Reason.WORKER_LOST
        assert session_pids(sid) == [sid]
    finally:
        os.kill(sid, signal.SIGKILL)
        _reap_child(sid)


def test_close_stale_sessions_closes_rows_without_an_owner_only(cast):
    legacy, alive = _session(cast, None), _session(cast, _process(+60))
    assert close_stale_sessions() == 1
    legacy.refresh_from_db(), alive.refresh_from_db()
    assert legacy.end_reason == Reason.SERVER_SHUTDOWN and alive.ended_at is None


def test_revocation_is_recorded_before_it_is_sent(cast, settings):
    """With the channel layer down, revoking still marks the rows (the owners end them) and the AWS credentials."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                           "CONFIG": {"hosts": [{"address": f"redis://127.0.0.1:{_free_port()}/0",
                                                                 "socket_connect_timeout": 1}]}}}
    channel_layers.backends.clear()
    try:
        session = _session(cast, _process(+60))
        assert revoke_terminal_sessions(actor=cast.alice, user=cast.bob, message="Offboarded.") == [str(session.pk)]
    finally:
        channel_layers.backends.clear()
    session.refresh_from_db()
    assert session.revoke_requested_at is not None and session.revoke_message == "Offboarded."
    assert CredentialRevocation.objects.filter(subject__startswith=f"tenant-{cast.acme.pk}-user-{cast.bob.pk}").exists()


# --- real processes ----------------------------------------------------------------------------------
async def _exit_status(t: WsTerminal, timeout: float) -> dict:
    return await t.status("exit", timeout=timeout)


def _row(session_id) -> TerminalSession:
    return TerminalSession.objects.get(pk=session_id)


@pytest.mark.slow
def test_sigkill_of_a_daphne_ends_its_sessions_and_shells_and_spares_the_other(cast, transactional_db, tmp_path,
                                                                                 settings, redis_layer):
    cookie = signed_in_cookie(cast.bob)
    with two_daphnes(tmp_path, settings, redis_layer.url) as (one, two):

        async def scenario():
            async with contextlib.AsyncExitStack() as stack:
                doomed = [await stack.enter_async_context(ws_terminal(one, cookie)) for _ in range(3)]
                survivor = await stack.enter_async_context(ws_terminal(two, cookie))
                for i, t in enumerate(doomed):
                    await t.run(b"echo recorded-''" + str(i).encode() + b"; sleep 1002 & sleep 1001",
                                b"recorded-" + str(i).encode() + b"\r\n")
                await survivor.run(b"echo survivor-''before", b"survivor-before\r\n")
                sids = {t.session_id: int(await asyncio.to_thread(lambda s=t.session_id: _row(s).backend_session_id))
                        for t in doomed}
                for sid in sids.values():
                    await asyncio.to_thread(wait_for, lambda s=sid: len(session_pids(s)) >= 4, 10, "the shell's processes")
                one.proc.send_signal(signal.SIGKILL)
                one.proc.wait(10)

                def finished():
                    rows = TerminalSession.objects.filter(pk__in=list(sids))
                    return all(r.ended_at is not None for r in rows) and rows

                # Bounded: the lease, plus the survivor's reap interval and a margin for a busy machine.
                rows = await asyncio.to_thread(wait_for, finished, LEASE + 15, "the lost process's sessions to finish")
                assert {r.end_reason for r in rows} == {Reason.WORKER_LOST}, [(r.end_reason, r.end_message) for r in rows]
                for sid in sids.values():
                    await asyncio.to_thread(wait_for, lambda s=sid: session_pids(s) == [], 10, "no process of the shell left")
                leftovers = subprocess.run(["pgrep", "-f", "^sleep 100[12]$"], capture_output=True, text=True).stdout.split()
                own = [p for p in leftovers if _session_of(int(p)) in sids.values()]
                assert own == [], f"processes of the lost sessions survived: {own}"
                # Recordings were written as the output went out: what was printed before the kill is there.
                for i, row in enumerate(sorted(rows, key=lambda r: [t.session_id for t in doomed].index(str(r.pk)))):
                    with await asyncio.to_thread(open_recording, row) as recording:  # spooled until the store has it
                        text = recording.read().decode()
                    assert f"recorded-{i}" in text, f"recording of session {i} lost its output"
                # The other process and its session were not touched, and it still opens new ones.
                assert (await asyncio.to_thread(_row, survivor.session_id)).ended_at is None
                await survivor.run(b"echo survivor-''after", b"survivor-after\r\n")
                async with ws_terminal(two, cookie) as fresh:
                    await fresh.run(b"echo fresh-''one", b"fresh-one\r\n")
                lost = await asyncio.to_thread(lambda: PortalProcess.objects.filter(worker="1", pid=one.proc.pid).first())
                assert lost.end_reason == PortalProcess.EndReason.LEASE_EXPIRED

        asyncio.run(scenario())


def _session_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2:].split()[3])


@pytest.mark.slow
def test_idle_terminals_outlive_the_redis_read_timeout_and_are_still_revoked(cast, transactional_db, tmp_path,
                                                                             settings, redis_layer):
    """redis-py 8 gives reads a 5 s timeout, channels_redis waits 5 s for a message: quiet terminals died."""
    cookie = signed_in_cookie(cast.bob)
    with two_daphnes(tmp_path, settings, redis_layer.url) as (one, two):

        async def scenario():
            async with contextlib.AsyncExitStack() as stack:
                terms = [await stack.enter_async_context(ws_terminal(server, cookie)) for server in [one, two] * 5]
                await asyncio.sleep(12)  # idle, well past the 5 s read timeout (twice)
                for t in terms:
                    await t.run(b"echo still-''here", b"still-here\r\n")
                assert all(t.statuses[-1]["type"] == "connected" for t in terms)
                # Every session still listens on the layer (its groups are there, its listener never failed).
                for t in terms:
                    assert redis_layer.client().exists(f"asgi:group:terminal.session.{t.session_id}")
                # Only the fast path: the channel-layer message alone, no marked rows for the durable check.
                await channel_layers["default"].group_send(user_group(cast.bob.pk), {"type": "terminal.revoke",
                                                                                    "message": "Revoked."})
                return await asyncio.gather(*(_exit_status(t, 10) for t in terms))

        ends = asyncio.run(scenario())
        logs = one.log_path.read_text() + two.log_path.read_text()
    assert {e["reason"] for e in ends} == {"revoked"}
    assert set(TerminalSession.objects.values_list("end_reason", flat=True)) == {Reason.REVOKED}
    for trouble in ("Exception inside application", "TimeoutError", "channel layer unavailable"):
        assert trouble not in logs, f"{trouble!r} in the daphne logs:\n{logs[-3000:]}"


@pytest.mark.slow
def test_a_redis_restart_ends_no_shell_and_loses_no_revocation(cast, transactional_db, tmp_path, settings, redis_layer):
    cookie = signed_in_cookie(cast.bob)
    with two_daphnes(tmp_path, settings, redis_layer.url) as (one, two):

        async def scenario():
            async with contextlib.AsyncExitStack() as stack:
                a = await stack.enter_async_context(ws_terminal(one, cookie))
                b = await stack.enter_async_context(ws_terminal(two, cookie))
                redis_layer.stop()
                # Redis is down: open terminals keep working and new ones open.
                await a.run(b"echo a-''during", b"a-during\r\n")
                await b.run(b"echo b-''during", b"b-during\r\n")
                c = await stack.enter_async_context(ws_terminal(two, cookie))
                await c.run(b"echo c-''during", b"c-during\r\n")
                # A revocation while Redis is down is not lost: the owner sees it in the database.
                marked = await asyncio.to_thread(revoke_terminal_sessions, actor=cast.alice,
                                                 session=await asyncio.to_thread(_row, a.session_id))
                assert marked == [a.session_id]
                assert (await _exit_status(a, 10))["reason"] == "revoked"
                redis_layer.start()
                # Once Redis is back the fast path is rejoined (the sessions' groups reappear) ...
                for t in (b, c):
                    key = f"asgi:group:terminal.session.{t.session_id}"
                    await asyncio.to_thread(wait_for, lambda k=key: redis_layer.client().exists(k), 15,
                                            f"{key} to be rejoined")
                await b.run(b"echo b-''after", b"b-after\r\n")
                # ... and revocation through it works again.
                await asyncio.to_thread(revoke_terminal_sessions, actor=cast.alice, user=cast.bob)
                ends = await asyncio.gather(_exit_status(b, 10), _exit_status(c, 10))
                return ends

        ends = asyncio.run(scenario())
    assert [e["reason"] for e in ends] == ["revoked", "revoked"]
    assert not TerminalSession.objects.filter(ended_at__isnull=True).exists()
    assert set(TerminalSession.objects.values_list("end_reason", flat=True)) == {Reason.REVOKED}


@pytest.mark.slow
@pytest.mark.slurm
def test_the_job_poller_resumes_by_itself_after_a_redis_restart(slurm_cast, transactional_db, tmp_path, settings,
                                                                 private_redis):
    """A real Celery worker and beat on this test's own Redis (broker and poll locks), which is restarted."""
    import sys
    from pathlib import Path

    from django.db import connection

    from clusters.models import Cluster
    from jobs.models import Job
    from tests.conftest import stop_process
    from tests.test_slurm_live import submit

    c = slurm_cast
    Cluster.objects.filter(pk=c.hpc.pk).update(poll_interval=2)
    s = connection.settings_dict
    env = {**os.environ, "CLUSTERRA_DATABASE_URL": f"postgres://{s['USER']}@{s['HOST']}:{s['PORT']}/{s['NAME']}",
           "CLUSTERRA_DATA_DIR": str(tmp_path), "CLUSTERRA_SECRET_KEY": settings.SECRET_KEY,
           "CLUSTERRA_CELERY_BROKER_URL": private_redis.url, "CLUSTERRA_POLL_TICK": "1"}
    log = tmp_path / "celery.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "clusterra", "worker", "--beat", "--pool=solo", "--loglevel=INFO",
         f"--schedule={tmp_path / 'beat-schedule'}"],
        cwd=Path(__file__).resolve().parent.parent, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
    )

    def cached(job_id):
        assert worker.poll() is None, log.read_text()[-3000:]
        return Job.objects.filter(cluster=c.hpc, job_id=job_id, state="COMPLETED").exists()

    def waited(condition, timeout, what):
        try:
            return wait_for(condition, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; worker log:\n{log.read_text()[-3000:]}") from None

    try:
        before = submit(c.bob_account, "#!/bin/bash\ntrue\n", name="before-restart")
        waited(lambda: cached(before), 60, "the poller to cache a job")
        private_redis.stop()
        during = submit(c.bob_account, "#!/bin/bash\ntrue\n", name="during-outage")  # Slurm does not need Redis
        # The worker notices (and must not die of it) before Redis comes back.
        waited(lambda: "Connection to broker lost" in log.read_text(), 60, "the worker to notice the outage")
        assert worker.poll() is None, log.read_text()[-3000:]
        private_redis.start()
        waited(lambda: cached(during), 120, "the poller to resume after Redis came back")
    finally:
        stop_process(worker, timeout=20)


@pytest.mark.slow
def test_a_daphne_holds_a_lease_from_its_start_and_gives_it_back_when_stopped(transactional_db, tmp_path, settings):
    """Without any terminal yet it registers (so it reaps lost peers), and a clean stop is not a loss."""
    with run_daphne(tmp_path, settings, {"CLUSTERRA_WORKER_ID": "7"}) as server:
        process = wait_for(lambda: PortalProcess.objects.filter(worker="7", pid=server.proc.pid).first(), 30,
                           "the daphne to register its process")
        assert process.ended_at is None and process.lease_until > timezone.now()
        first_lease = process.lease_until
        wait_for(lambda: PortalProcess.objects.get(pk=process.pk).lease_until > first_lease, 10, "the lease to be renewed")
        stop_process(server.proc)
    process.refresh_from_db()
    assert process.end_reason == PortalProcess.EndReason.STOPPED
