"""Celery app: background work (the job poller). Broker: Redis (CLUSTERRA_CELERY_BROKER_URL)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clusterra.settings")

app = Celery("clusterra")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
