"""/healthz, /readyz and /metrics: answered by the first middleware, before anything else runs.

Probes and scrapers reach each process directly (a pod IP, 127.0.0.1:800N, a unix socket), with Host
headers the portal does not serve and no session: answering here keeps them out of ALLOWED_HOSTS,
SECURE_SSL_REDIRECT, sessions, CSRF and sign-in, and costs the other requests one dict lookup.

- /healthz: the process is up and its event loop turns. No dependency is checked, so a database blip
  does not make an orchestrator restart every process.
- /readyz: the database (SELECT 1), the channel layer (a PING to each Redis host; the in-memory layer
  is always ready) and the recordings (a file can be created in the spool, and in RECORDINGS_DIR with the
  filesystem store), run concurrently, each within READY_CHECK_TIMEOUT. 200 {"status":"ok"} or 503
  {"status":"unavailable","failed":[names]}; the cause is logged here, never sent. A remote recording
  store (S3) that does not answer only adds "degraded":["recording_store"] to the answer: recordings wait
  in the spool meanwhile, and taking every process out of service would help nobody.
- /metrics: Prometheus text (clusterra/metrics.py), for a bearer token (CLUSTERRA_METRICS_TOKEN) or a
  direct client in CLUSTERRA_METRICS_ALLOWED_NETWORKS.
"""

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpResponse

logger = logging.getLogger(__name__)

READY_CHECK_TIMEOUT = 2.0
# Blocking checks run in pools of their own, not in Django's shared sync thread: a hung database or NFS
# mount then delays only its own check (which times out), never the portal's requests or the other checks.
_check_pools = {name: ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"readyz-{name}")
                for name in ("database", "recordings", "recording_store")}
_last_logged: dict[str, float] = {}
_FAILURE_LOG_INTERVAL = 60.0


def _json(status: int, body: dict) -> HttpResponse:
    response = HttpResponse(json.dumps(body), status=status, content_type="application/json")
    response["Cache-Control"] = "no-store"
    return response


# --- readiness checks ----------------------------------------------------------------------------
def _check_database() -> None:
    from django.db import connections
    from django.db.utils import load_backend

    # A connection of its own (nothing shared with requests), that gives up connecting in time.
    settings_dict = dict(connections.settings["default"])
    if settings_dict["ENGINE"] == "django.db.backends.postgresql":
        settings_dict["OPTIONS"] = {**settings_dict.get("OPTIONS", {}), "connect_timeout": int(READY_CHECK_TIMEOUT) + 1}
    conn = load_backend(settings_dict["ENGINE"]).DatabaseWrapper(settings_dict, "default")
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        conn.close()


def _check_recordings() -> None:
    """The spool every terminal records into, and a local store (a remote one is _check_recording_store)."""
    from terminal import recordings

    recordings.check_spool()
    store = recordings.get_store()
    if store.critical:
        store.healthcheck()


def _check_recording_store() -> None:
    from terminal import recordings

    store = recordings.get_store()
    if not store.critical:
        store.healthcheck()


async def _check_channel_layer() -> None:
    config = settings.CHANNEL_LAYERS.get("default", {})
    backend = config.get("BACKEND", "")
    if backend == "channels.layers.InMemoryChannelLayer":
        return
    hosts = config.get("CONFIG", {}).get("hosts")
    if backend.startswith("channels_redis.") and hosts:
        import redis.asyncio
        from channels_redis.utils import create_pool, decode_hosts

        for host in decode_hosts(hosts):
            pool = create_pool({**host, "socket_connect_timeout": READY_CHECK_TIMEOUT, "socket_timeout": READY_CHECK_TIMEOUT})
            client = redis.asyncio.Redis(connection_pool=pool)
            try:
                await client.ping()
            finally:
                await client.aclose()
                await pool.disconnect()
        return
    # Another layer: a message round trip through it.
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "readyz.ping"})
    await layer.receive(channel)


async def _in_pool(name: str, fn) -> None:
    await asyncio.get_running_loop().run_in_executor(_check_pools[name], fn)


CHECKS = {
    "database": lambda: _in_pool("database", _check_database),
    "channel_layer": _check_channel_layer,
    "recordings": lambda: _in_pool("recordings", _check_recordings),
}
# Checked like CHECKS, but a failure is reported as "degraded" and leaves the process ready.
DEGRADING_CHECKS = {
    "recording_store": lambda: _in_pool("recording_store", _check_recording_store),
}


async def _run_check(name: str, check) -> bool:
    try:
        await asyncio.wait_for(check(), READY_CHECK_TIMEOUT)
        if _last_logged.pop(name, None) is not None:
            logger.info("readiness check %s ok again", name)
        return True
    except Exception as exc:
        now = time.monotonic()
        if now - _last_logged.get(name, -_FAILURE_LOG_INTERVAL) >= _FAILURE_LOG_INTERVAL:
            _last_logged[name] = now
            cause = "timed out" if isinstance(exc, asyncio.TimeoutError) else f"{type(exc).__name__}: {exc}"
            logger.warning("readiness check %s failed: %s", name, cause)
        return False


async def readiness() -> list[str]:
    """The names of the failed checks (empty: ready)."""
    failed, _ = await _readiness()
    return failed


async def _readiness() -> tuple[list[str], list[str]]:
    """The names of the failed checks and of the failed degrading checks."""
    checks = {**CHECKS, **DEGRADING_CHECKS}
    names = list(checks)
    results = await asyncio.gather(*(_run_check(name, checks[name]) for name in names))
    down = [name for name, ok in zip(names, results, strict=True) if not ok]
    return [name for name in down if name in CHECKS], [name for name in down if name in DEGRADING_CHECKS]


async def _readyz() -> HttpResponse:
    failed, degraded = await _readiness()
    extra = {"degraded": degraded} if degraded else {}
    if failed:
        return _json(503, {"status": "unavailable", "failed": failed, **extra})
    return _json(200, {"status": "ok", **extra})


# --- /metrics access -----------------------------------------------------------------------------
_PROXY_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


def _bearer(request) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _address_allowed(request) -> bool:
    # A request relayed by a proxy carries the proxy's address (and, with daphne --proxy-headers, a
    # client-supplied X-Forwarded-For may be taken as the client): the address proves nothing then.
    if any(name in request.META for name in _PROXY_HEADERS):
        return False
    # No address: daphne on a unix socket (-u), whose peers are on this machine like loopback ones.
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR") or "127.0.0.1")
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in settings.METRICS_ALLOWED_NETWORKS)


def _metrics(request) -> HttpResponse:
    token = settings.METRICS_TOKEN
    presented = _bearer(request)
    authorised = bool(token and presented and hmac.compare_digest(presented.encode(), token.encode()))
    if not authorised and (presented or not _address_allowed(request)):
        if token:
            response = _json(401, {"detail": "A valid bearer token is needed."})
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
        return _json(403, {"detail": "Forbidden."})
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.exposition import choose_encoder

    from clusterra import metrics

    registry = REGISTRY
    if metrics.MULTIPROC_DIR:
        from prometheus_client import multiprocess

        _reap_dead_processes(metrics.MULTIPROC_DIR)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=metrics.MULTIPROC_DIR)
    encoder, content_type = choose_encoder(request.META.get("HTTP_ACCEPT", ""))
    response = HttpResponse(encoder(registry), content_type=content_type)
    response["Cache-Control"] = "no-store"
    return response


def _reap_dead_processes(path: str) -> None:
    """Drop the live-gauge files of processes that died without saying so (SIGKILL, OOM): a killed daphne's
    sessions no longer count as open. Needs every writer of the directory in this PID namespace."""
    from prometheus_client import multiprocess

    for name in os.listdir(path):
        if not (name.startswith("gauge_live") and name.endswith(".db")):
            continue
        try:
            pid = int(name[:-3].rsplit("_", 1)[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, path)
        except (ValueError, IndexError, PermissionError):
            continue


# --- the middleware ------------------------------------------------------------------------------
def _healthz(request) -> HttpResponse:
    return _json(200, {"status": "ok"})


class HybridMiddleware:
    """A middleware that runs in the server's own mode (async under daphne), so no request pays a thread hop.

    Subclasses implement call(request) and acall(request).
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request):
        return self.acall(request) if self.async_mode else self.call(request)


class OpsEndpointsMiddleware(HybridMiddleware):
    """First in MIDDLEWARE: answers the three operations paths, passes everything else on untouched."""

    def call(self, request):
        if request.path_info not in _PATHS:
            return self.get_response(request)
        if request.method not in ("GET", "HEAD"):
            return _json(405, {"detail": "Method not allowed."})
        if request.path_info == "/readyz":
            return async_to_sync(_readyz)()
        return _PATHS[request.path_info](request)

    async def acall(self, request):
        if request.path_info not in _PATHS:
            return await self.get_response(request)
        if request.method not in ("GET", "HEAD"):
            return _json(405, {"detail": "Method not allowed."})
        if request.path_info == "/readyz":
            return await _readyz()
        if request.path_info == "/metrics" and metrics_multiproc():
            # Reading the directory's files is file I/O: off the event loop.
            return await asyncio.get_running_loop().run_in_executor(None, _metrics, request)
        return _PATHS[request.path_info](request)


def metrics_multiproc() -> bool:
    from clusterra import metrics

    return bool(metrics.MULTIPROC_DIR)


_PATHS = {"/healthz": _healthz, "/readyz": None, "/metrics": _metrics}
