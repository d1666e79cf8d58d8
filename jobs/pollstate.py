"""Each cluster's poll state, in Redis next to the poller's due/lock key (jobs.tasks.claim_poll).

- `clusterra:poll:<pk>`: due/lock key. It lives for the cluster's interval after a good poll and for
  the back-off delay after a failed one, so beat does not claim the cluster again before then.
- `clusterra:poll-state:<pk>`: a hash: `ok_at` (last good poll), `error`, `error_at` (last failure),
  and while the cluster fails: `failures` (in a row) and `down_since`.

The back-off doubles with each failure in a row, from twice the interval up to BACKOFF_MAX. The first
failure of an outage is logged as a warning, the rest only at debug; the first good poll after it logs
the recovery. Readers (pages, API) get None when Redis does not answer: the state is advisory.
"""

import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
from django.conf import settings

logger = logging.getLogger("jobs.tasks")

BACKOFF_MAX = 120  # seconds between polls of a cluster that keeps failing, at most
DUE_KEY = "clusterra:poll:{}"
STATE_KEY = "clusterra:poll-state:{}"


def client(timeout: float = 5) -> redis.Redis:
    return redis.Redis.from_url(settings.POLL_LOCK_REDIS_URL, socket_timeout=timeout, socket_connect_timeout=timeout)


def _when(value) -> datetime | None:
    return datetime.fromtimestamp(float(value), tz=UTC) if value else None


@dataclass(frozen=True)
class PollState:
    ok_at: datetime | None
    error: str
    error_at: datetime | None
    failures: int
    down_since: datetime | None
    retry_in: int | None  # seconds until the poller tries again, while failing

    @property
    def failing(self) -> bool:
        return self.failures > 0

    @property
    def banner(self) -> str:
        """What the job pages say while the cluster's polls fail."""
        cached = f"{self.ok_at:%Y-%m-%d %H:%M:%S} UTC" if self.ok_at else "no successful poll yet"
        return f"{self.error}; showing cached data from {cached}."


def backoff_delay(interval: int, failures: int) -> int:
    return int(min(max(BACKOFF_MAX, interval), interval * 2 ** min(failures, 16)))


def record_failure(cluster, error: str, conn: redis.Redis | None = None) -> int:
    """Store the failure, push the next poll out by the back-off delay; returns that delay."""
    conn = conn or client()
    key = STATE_KEY.format(cluster.pk)
    now = time.time()
    pipe = conn.pipeline(transaction=True)
    pipe.hincrby(key, "failures", 1)
    pipe.hsetnx(key, "down_since", now)
    pipe.hset(key, mapping={"error": error[:500], "error_at": now})
    failures = pipe.execute()[0]
    delay = backoff_delay(cluster.poll_interval, failures)
    conn.set(DUE_KEY.format(cluster.pk), "backoff", ex=delay)
    if failures == 1:
        logger.warning("poll of cluster %s failed: %s; retrying with back-off (in %d s, then at most every %d s) "
                       "and logging nothing more until it works again", cluster.slug, error, delay,
                       max(BACKOFF_MAX, cluster.poll_interval))
    else:
        logger.debug("poll of cluster %s failed again (%d in a row, next try in %d s): %s", cluster.slug, failures,
                     delay, error)
    return delay


def record_success(cluster, conn: redis.Redis | None = None) -> None:
    conn = conn or client()
    key = STATE_KEY.format(cluster.pk)
    now = time.time()
    pipe = conn.pipeline(transaction=True)
    pipe.hmget(key, "failures", "down_since")
    pipe.hdel(key, "failures", "down_since")
    pipe.hset(key, "ok_at", now)
    (failures, down_since), deleted, _ = pipe.execute()
    if deleted and failures:  # the one poll that ends the outage (EXEC is atomic)
        logger.info("poll of cluster %s works again after %s failed polls over %.0f s", cluster.slug,
                    int(failures), now - float(down_since or now))


def read(cluster, conn: redis.Redis | None = None) -> PollState | None:
    """The cluster's poll state, or None if it was never polled or Redis does not answer (within 1 s)."""
    return read_many([cluster], conn).get(cluster.pk)


def read_many(clusters, conn: redis.Redis | None = None) -> dict[int, PollState]:
    """The poll states of several clusters in one round trip, by cluster id (absent: never polled); {} if Redis
    does not answer within 1 s (a page waits that long once, not once per cluster)."""
    if not clusters:
        return {}
    try:
        conn = conn or client(timeout=1)
        pipe = conn.pipeline(transaction=False)
        for cluster in clusters:
            pipe.hgetall(STATE_KEY.format(cluster.pk))
            pipe.ttl(DUE_KEY.format(cluster.pk))
        replies = pipe.execute()
    except redis.RedisError:
        return {}
    states = {}
    for cluster, raw, ttl in zip(clusters, replies[::2], replies[1::2], strict=True):
        state = _state(raw, ttl)
        if state is not None:
            states[cluster.pk] = state
    return states


def _state(raw: dict, ttl: int) -> PollState | None:
    if not raw:
        return None
    raw = {k.decode(): v.decode() for k, v in raw.items()}
    failures = int(raw.get("failures") or 0)
    return PollState(ok_at=_when(raw.get("ok_at")), error=raw.get("error", ""), error_at=_when(raw.get("error_at")),
                     failures=failures, down_since=_when(raw.get("down_since")),
                     retry_in=ttl if failures and ttl and ttl > 0 else None)


# Deletes the key only if it still holds our token: after its TTL ran out another worker may hold it now.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


@contextlib.contextmanager
def running_once(conn: redis.Redis, key: str, ttl: int):
    """Yields True for one holder of `key` at a time across every worker (False: someone else runs it), for at
    most `ttl` seconds; released at the end of the block. For the poller and the quota collection."""
    token = uuid.uuid4().hex
    held = bool(conn.set(key, token, nx=True, ex=ttl))
    try:
        yield held
    finally:
        if held:
            conn.eval(_RELEASE, 1, key, token)
