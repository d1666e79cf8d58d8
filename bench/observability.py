"""Per-request cost of the observability middlewares (issue 8 §5), in-process through Django's ASGI handler.

    .venv/bin/python bench/observability.py [requests]

Times GET /accounts/login/ (a rendered page) with the full MIDDLEWARE and with the two added ones
(clusterra.ops.OpsEndpointsMiddleware, clusterra.logcontext.RequestContextMiddleware) removed,
alternating rounds, and /healthz; then the CPU time of the two middlewares alone per request and of one
JSON log line. Prints medians. No database is touched. On a busy machine the page figures are noisy.
"""

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clusterra.settings")
os.environ.setdefault("CLUSTERRA_DATA_DIR", tempfile.mkdtemp(prefix="clusterra-bench-"))
os.environ["CLUSTERRA_ALLOWED_HOSTS"] = "testserver"

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.test import AsyncClient, override_settings  # noqa: E402

OURS = ("clusterra.ops.OpsEndpointsMiddleware", "clusterra.logcontext.RequestContextMiddleware")


async def per_request_us(path: str, n: int) -> float:
    client = AsyncClient()
    for _ in range(50):  # warm up
        await client.get(path)
    started = time.perf_counter()
    for _ in range(n):
        response = await client.get(path)
        assert response.status_code == 200, response.status_code
    return (time.perf_counter() - started) / n * 1e6


def middleware_cpu_us(n: int = 100_000) -> float:
    """CPU per request added by the two middlewares, around a view that does nothing (minus the bare view)."""
    from django.http import HttpResponse
    from django.test import RequestFactory

    from clusterra.logcontext import RequestContextMiddleware
    from clusterra.ops import OpsEndpointsMiddleware

    async def view(request):
        return HttpResponse(b"")

    chain = OpsEndpointsMiddleware(RequestContextMiddleware(view))
    request = RequestFactory().get("/t/acme/c/hpc/jobs/")

    async def run(handler):
        started = time.process_time()
        for _ in range(n):
            await handler(request)
        return (time.process_time() - started) / n * 1e6

    return asyncio.run(run(chain)) - asyncio.run(run(view))


def log_line_cpu_us(n: int = 20_000) -> float:
    """CPU per JSON log line (context, redaction, formatting) written to /dev/null."""
    import logging

    from clusterra import logcontext

    handler = logging.StreamHandler(open(os.devnull, "w"))
    handler.setFormatter(logcontext.JsonFormatter())
    handler.addFilter(logcontext.ContextFilter())
    handler.addFilter(logcontext.RedactFilter())
    log = logging.getLogger("bench.observability")
    log.addHandler(handler)
    log.propagate = False
    with logcontext.bound(request_id="0123456789abcdef", session_id="s-1"):
        started = time.process_time()
        for i in range(n):
            log.info("polled %s: %d jobs in queue, %d left, squeue %.3f s", "acme/hpc", i, 3, 0.25)
        return (time.process_time() - started) / n * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    without = [m for m in settings.MIDDLEWARE if m not in OURS]
    results = {"with": [], "without": []}
    for _ in range(5):
        results["with"].append(asyncio.run(per_request_us("/accounts/login/", n)))
        with override_settings(MIDDLEWARE=without):
            results["without"].append(asyncio.run(per_request_us("/accounts/login/", n)))
    healthz = statistics.median(asyncio.run(per_request_us("/healthz", n)) for _ in range(3))
    w, wo = statistics.median(results["with"]), statistics.median(results["without"])
    print(f"GET /accounts/login/, {n} requests x 5 rounds, median per request:")
    print(f"  without the observability middlewares: {wo:8.1f} us")
    print(f"  with them:                             {w:8.1f} us  ({w - wo:+.1f} us, {100 * (w - wo) / wo:+.1f} %)")
    print(f"GET /healthz: {healthz:.1f} us")
    print(f"CPU added by the two middlewares per request: {statistics.median(middleware_cpu_us() for _ in range(3)):.2f} us")
    print(f"CPU per JSON log line (context + redaction + format): {statistics.median(log_line_cpu_us() for _ in range(3)):.2f} us")


if __name__ == "__main__":
    main()
