"""Every Prometheus metric of the portal, defined once here (docs/deployment.md, "Monitoring").

Served at /metrics (clusterra/ops.py). Several processes (daphne ×N, the Celery worker and its children)
each count their own. With PROMETHEUS_MULTIPROC_DIR set in the environment *before the process starts*
(prometheus_client picks its value store at import), every process writes its values to files in that
directory and /metrics on any daphne answers with the sum over all of them; without it, each process
serves only its own values. Wipe the directory only when every process is down.

How to use them (the terminal, the poller, Celery and AWS code call these; nothing else defines metrics):

    from clusterra import metrics

    metrics.TERMINAL_SESSIONS_LIVE.labels(backend="local").inc()     # a LiveSession started
    metrics.TERMINAL_SESSIONS_LIVE.labels(backend="local").dec()     # ...and ended (exactly once, in end())
    metrics.TERMINAL_SESSION_ENDS.labels(backend="local", reason="revoked").inc()
    metrics.TERMINAL_RELAY_BYTES.labels(direction="out").inc(nbytes)  # at session end or in batches,
    metrics.TERMINAL_RELAY_BYTES.labels(direction="in").inc(nbytes)   # never once per keystroke
    metrics.TERMINAL_WEBSOCKET_REFUSALS.labels(code="4403").inc()      # a handshake refused / closed at once

A new Gauge must say how processes combine (multiprocess_mode: livesum for "open now" counts, mostrecent
for a value one process measured); Info, Enum and set_function do not work across processes.
Label values must come from small fixed sets (backend names, end reasons, close codes, task names,
AWS error codes, cluster names): never a user, a session id, a path or free text.
"""

import contextlib
import os
import time

from prometheus_client import Counter, Gauge, Histogram

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
if MULTIPROC_DIR:
    os.makedirs(MULTIPROC_DIR, mode=0o700, exist_ok=True)

# --- terminal (instrumented in terminal/live.py and terminal/consumers.py) -----------------------
TERMINAL_SESSIONS_LIVE = Gauge(
    "clusterra_terminal_sessions_live", "Terminal sessions open now (attached or waiting for a reattach).",
    ["backend"], multiprocess_mode="livesum",
)
TERMINAL_SESSION_ENDS = Counter(
    "clusterra_terminal_session_ends", "Terminal sessions ended, by backend and end reason.", ["backend", "reason"],
)
TERMINAL_RELAY_BYTES = Counter(
    "clusterra_terminal_relay_bytes",
    "Bytes relayed between browsers and shells: direction=in is keyboard input to the shell, out is shell output.",
    ["direction"],
)
PORTAL_PROCESSES_LOST = Counter(
    "clusterra_portal_processes_lost", "Portal processes declared lost because their lease ran out (terminal/processes.py).",
)
TERMINAL_WEBSOCKET_REFUSALS = Counter(
    "clusterra_terminal_websocket_refusals", "Terminal WebSockets refused or closed at connect, by close code.", ["code"],
)

# --- recordings and session logs (terminal/recordings.py) ---------------------------------------
SESSION_LOGS = Counter(
    "clusterra_session_logs",
    "Session logs moved on, by kind (asciicast, ssm_s3, ssm_cloudwatch) and outcome: stored, store_failed, fetched, "
    "fetch_failed, late, missing, rejected, expired.", ["kind", "outcome"],
)
SESSION_LOGS_WAITING = Gauge(
    "clusterra_session_logs_waiting", "Session logs not in the recording store yet, by state (spooled, awaited, late), "
    "as the last sweep counted them.", ["state"], multiprocess_mode="mostrecent",
)

# --- jobs poller (jobs/tasks.py) ------------------------------------------------------------------
JOBS_POLL_DURATION = Histogram(
    "clusterra_jobs_poll_duration_seconds", "Duration of one poll of a cluster (squeue, cache update, partitions).",
    ["cluster"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
JOBS_POLL_FAILURES = Counter(
    "clusterra_jobs_poll_failures", "Polls of a cluster that failed (Slurm or the head node unreachable).", ["cluster"],
)
JOBS_IN_QUEUE = Gauge(
    "clusterra_jobs_in_queue", "Jobs in the cluster's queue at its last successful poll.", ["cluster"],
    multiprocess_mode="mostrecent",
)

# --- Celery (clusterra/celery.py signal handlers) -------------------------------------------------
CELERY_TASKS = Counter(
    "clusterra_celery_tasks", "Celery task outcomes: state is success, failure, retry or revoked.", ["task", "state"],
)

# --- AWS (clusters/aws.py describe_client_error, the one place AWS failures are mapped) -----------
AWS_ERRORS = Counter("clusterra_aws_errors", "Failed AWS calls, by AWS error code (or botocore exception name).", ["code"])


def cluster_label(cluster) -> str:
    """The `cluster` label value: "<tenant slug>/<cluster slug>"."""
    return f"{cluster.tenant.slug}/{cluster.slug}"


def short_label(value: str, limit: int = 64) -> str:
    """A label value from outside (an AWS error code): printable, bounded, never empty."""
    value = "".join(ch for ch in str(value) if ch.isalnum() or ch in "._-:")[:limit]
    return value or "unknown"


@contextlib.contextmanager
def timed_poll(cluster):
    """Around one poll of `cluster`: its duration, and a failure if the block raises."""
    label = cluster_label(cluster)
    started = time.monotonic()
    try:
        yield
    except Exception:
        JOBS_POLL_FAILURES.labels(cluster=label).inc()
        raise
    finally:
        JOBS_POLL_DURATION.labels(cluster=label).observe(time.monotonic() - started)
