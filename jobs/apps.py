from django.apps import AppConfig


class JobsConfig(AppConfig):
    """Slurm jobs: builders/parsers, the job cache and its poller, API and pages (see the jobs issue)."""

    name = "jobs"
