"""Template filters that show durations the way people read them (clusterra/durations.py) and job times."""

import signal

from django import template
from django.utils import timezone

from clusterra import durations

register = template.Library()

register.filter("slurm_duration", durations.slurm_duration)
register.filter("duration_words", durations.duration_words)


@register.filter("job_never_started")
def never_started(job) -> bool:
    """Cancelled while pending: Slurm gives it no nodes and the same start and end time (and ExitCode 0:0)."""
    if job.state == "PENDING":
        return True
    return not job.node_list and (job.start_time is None or job.start_time == job.end_time)


@register.filter
def job_elapsed(job) -> str:
    """Time a job has run (to its end, or to now while it runs) in Slurm's format; empty if it has not run.
    (squeue's start time of a pending job is when Slurm expects to start it.)"""
    if job.start_time is None or never_started(job):
        return ""
    end = job.end_time if job.end_time and job.state not in ("RUNNING", "SUSPENDED", "COMPLETING") else timezone.now()
    return durations.slurm_duration(max(0, int((end - job.start_time).total_seconds())))


@register.filter
def job_exit(job) -> str:
    """How a job ended, from Slurm's ExitCode `code:signal`: `exit code 1`, `exit code 0, signal 15 (SIGTERM)`,
    or `did not start` for a job cancelled while pending (Slurm reports 0:0 for it, which would read as success)."""
    if job.exit_code is None and job.exit_signal is None:
        return ""
    if never_started(job):
        return "did not start"
    text = f"exit code {job.exit_code if job.exit_code is not None else '?'}"
    if job.exit_signal:
        try:
            name = f" ({signal.Signals(job.exit_signal).name})"
        except ValueError:
            name = ""
        text += f", signal {job.exit_signal}{name}"
    return text


@register.filter
def job_waiting(job) -> str:
    """How long a pending job has waited since it was submitted, in Slurm's format (OOD users ask for it)."""
    if job.state != "PENDING" or job.submit_time is None:
        return ""
    return durations.slurm_duration(max(0, int((timezone.now() - job.submit_time).total_seconds())))
