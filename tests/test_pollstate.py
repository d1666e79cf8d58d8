"""The poller's per-cluster state and back-off (jobs.pollstate) on the real Redis, and the one place that
tells "Slurm is down" from a Slurm command's exit status and stderr (jobs.slurm.check_reachable).
The real outage, with slurmctld stopped, is tests/test_slurm_down.py."""

import logging

import pytest
import redis

from clusters.executors import CommandResult
from jobs import pollstate, slurm

REDIS_URL = "redis://127.0.0.1:6379/12"


class FakeCluster:
    """Only what pollstate reads of a cluster (a row would need the database for nothing)."""

    def __init__(self, pk, interval=2):
        self.pk, self.slug, self.name, self.poll_interval = pk, f"c{pk}", f"Cluster {pk}", interval


@pytest.fixture
def conn(settings):
    settings.POLL_LOCK_REDIS_URL = REDIS_URL
    client = redis.Redis.from_url(REDIS_URL)
    keys = [pollstate.STATE_KEY.format(990001), pollstate.DUE_KEY.format(990001)]
    client.delete(*keys)
    yield client
    client.delete(*keys)


@pytest.mark.parametrize("argv, code, stderr, down", [
    (["squeue"], 1, b"slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n", True),
    (["scancel", "5"], 8, b"scancel: error: Kill job error on job id 5: Unable to contact slurm controller (connect failure)\n", True),
    (["sbatch"], 1, b"sbatch: error: Batch job submission failed: Socket timed out on send/recv operation\n", True),
    (["sacct"], 1, b"sacct: error: Problem talking to the database: Connection refused\n", True),
    (["sbatch"], 1, b"sbatch: error: Batch job submission failed: Invalid partition name specified\n", False),
    (["tail", "-n", "5", "--", "/x"], 1, b"tail: Connection refused\n", False),  # not a Slurm command
    (["squeue"], 0, b"Unable to contact slurm controller\n", False),  # it worked after all
])
def test_slurm_down_is_told_from_the_commands_own_words(argv, code, stderr, down):
    result = CommandResult(tuple(argv), code, b"", stderr, 0.1)
    if not down:
        slurm.check_reachable("Acme HPC", result)
        return
    with pytest.raises(slurm.SlurmUnavailable) as raised:
        slurm.check_reachable("Acme HPC", result)
    assert str(raised.value).startswith("Slurm on Acme HPC is not answering (slurmctld unreachable: ")
    assert stderr.decode().strip() in str(raised.value)


def test_backoff_doubles_up_to_the_cap():
    assert [pollstate.backoff_delay(2, n) for n in range(1, 9)] == [4, 8, 16, 32, 64, 120, 120, 120]
    assert pollstate.backoff_delay(300, 1) == 300  # a cluster polled more rarely than the cap: its own interval


def test_an_outage_is_logged_once_backs_off_and_recovers(conn, caplog):
    cluster = FakeCluster(990001)
    caplog.set_level(logging.DEBUG, logger="jobs.tasks")
    pollstate.record_success(cluster, conn)
    good = pollstate.read(cluster, conn)
    assert good.ok_at and not good.failing and good.retry_in is None
    for n in range(1, 4):
        delay = pollstate.record_failure(cluster, "Slurm on Cluster 990001 is not answering (x)", conn)
        assert delay == 2 * 2 ** n
        assert 0 < conn.ttl(pollstate.DUE_KEY.format(cluster.pk)) <= delay  # beat does not claim it before then
    state = pollstate.read(cluster, conn)
    assert state.failing and state.failures == 3 and state.down_since and state.ok_at == good.ok_at
    assert 0 < state.retry_in <= 16
    assert state.banner.startswith("Slurm on Cluster 990001 is not answering (x); showing cached data from ")
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "poll of cluster c990001 failed" in warnings[0].getMessage()

    caplog.clear()
    pollstate.record_success(cluster, conn)
    pollstate.record_success(cluster, conn)
    recovered = pollstate.read(cluster, conn)
    assert not recovered.failing and recovered.ok_at > good.ok_at and recovered.error_at  # the last error stays visible
    lines = [r.getMessage() for r in caplog.records if "works again" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("poll of cluster c990001 works again after 3 failed polls over ")


def test_state_readers_do_not_fail_when_redis_is_away(settings):
    settings.POLL_LOCK_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    assert pollstate.read(FakeCluster(990002)) is None


def test_running_once_is_held_by_one_and_never_releases_someone_elses(conn):
    key = "clusterra:test-running-once"
    conn.delete(key)
    with pollstate.running_once(conn, key, 30) as first:
        with pollstate.running_once(conn, key, 30) as second:
            assert (first, second) == (True, False)
        assert conn.exists(key)  # the one that did not get it does not release it
    assert not conn.exists(key)
    with pollstate.running_once(conn, key, 30) as slow:
        assert slow
        conn.set(key, "another worker's token", ex=30)  # our TTL ran out and another worker took it
    assert conn.get(key) == b"another worker's token"  # ours is released, theirs stays
    conn.delete(key)
