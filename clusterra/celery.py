"""Celery app: background work (the job poller). Broker: Redis (CLUSTERRA_CELERY_BROKER_URL)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clusterra.settings")

app = Celery("clusterra")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


# --- logs and metrics (clusterra/logcontext.py, clusterra/metrics.py) --------------------------------------
from celery import signals  # noqa: E402

from clusterra import logcontext, metrics  # noqa: E402

REQUEST_ID_HEADER = "clusterra_request_id"
_task_context_tokens: dict[str, object] = {}


@signals.setup_logging.connect
def _use_django_logging(**kwargs):
    """The worker logs like the web processes (settings.LOGGING: JSON, context, redaction), not Celery's way."""
    import logging.config

    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


@signals.before_task_publish.connect
def _carry_request_id(headers=None, **kwargs):
    request_id = logcontext.current().get("request_id")
    if request_id and headers is not None:
        headers.setdefault(REQUEST_ID_HEADER, request_id)


@signals.task_prerun.connect
def _bind_task_context(task_id=None, task=None, **kwargs):
    fields = {"task_id": task_id, "task": getattr(task, "name", None)}
    request_id = getattr(getattr(task, "request", None), REQUEST_ID_HEADER, None)
    if request_id:
        fields["request_id"] = request_id
    _task_context_tokens[task_id] = logcontext.bind(**fields)


@signals.task_postrun.connect
def _unbind_task_context(task_id=None, **kwargs):
    token = _task_context_tokens.pop(task_id, None)
    if token is not None:
        logcontext.reset(token)


def _count(state: str, sender, request=None) -> None:
    name = getattr(sender, "name", None) or getattr(request, "task", None) or getattr(request, "name", None) or "unknown"
    metrics.CELERY_TASKS.labels(task=name, state=state).inc()


@signals.task_success.connect
def _count_success(sender=None, **kwargs):
    _count("success", sender)


@signals.task_failure.connect
def _count_failure(sender=None, **kwargs):
    _count("failure", sender)


@signals.task_retry.connect
def _count_retry(sender=None, request=None, **kwargs):
    _count("retry", sender, request)


@signals.task_revoked.connect
def _count_revoked(sender=None, request=None, **kwargs):
    _count("revoked", sender, request)


@signals.beat_init.connect
def _collect_quotas_at_start(sender=None, **kwargs):
    """Beat runs an interval task first after one interval (CLUSTERRA_QUOTA_INTERVAL, 5 min): queue the quota
    collection once when beat starts too, so a fresh portal's dashboard does not say "not collected yet" that long."""
    try:
        app.send_task("clusters.tasks.collect_quotas_due")
    except Exception as exc:  # the broker not answering yet: the interval will do it
        import logging

        logging.getLogger(__name__).warning("could not queue the first quota collection: %s", exc)
