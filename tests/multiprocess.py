"""Several portal processes on a Redis channel layer of the test's own (tests/test_worker_loss.py,
tests/test_lifecycle.py): a private redis-server the test may stop and restart, the settings that make
the test process revoke through it, and two daphne processes sharing it."""

import contextlib
import subprocess

import pytest
import redis
from channels.layers import channel_layers

from tests.conftest import _free_port, run_daphne, wait_for

LEASE = 5  # CLUSTERRA_TERMINAL_WORKER_LEASE_SECONDS of the daphne processes (its minimum)


class PrivateRedis:
    """A redis-server of this test's own, which the test may stop and start again on the same port."""

    def __init__(self, tmp_path):
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tmp_path / "redis"
        self.dir.mkdir()
        self.proc: subprocess.Popen | None = None

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_timeout=1)
        wait_for(lambda: self._pings(client), 10, "redis-server to answer")

    @staticmethod
    def _pings(client) -> bool:
        try:
            return client.ping()
        except redis.RedisError:
            return False

    def stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)


@pytest.fixture
def private_redis(tmp_path):
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_layer(settings, private_redis):
    """This test process revokes through the same Redis channel layer as the daphne processes."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                           "CONFIG": {"hosts": [{"address": private_redis.url, "socket_timeout": 15,
                                                                 "socket_connect_timeout": 2}]}}}
    channel_layers.backends.clear()
    yield private_redis
    channel_layers.backends.clear()


@contextlib.contextmanager
def two_daphnes(tmp_path, settings, redis_url):
    env = {"CLUSTERRA_REDIS_URL": redis_url, "CLUSTERRA_TERMINAL_WORKER_LEASE_SECONDS": str(LEASE),
           "CLUSTERRA_TERMINAL_REATTACH_GRACE": "0"}
    (tmp_path / "w1").mkdir()
    (tmp_path / "w2").mkdir()
    with run_daphne(tmp_path / "w1", settings, {**env, "CLUSTERRA_WORKER_ID": "1"}) as one, \
            run_daphne(tmp_path / "w2", settings, {**env, "CLUSTERRA_WORKER_ID": "2"}) as two:
        yield one, two
