"""Job pages: lists and details read the cache; cancel goes through jobs.actions (submitting: jobs/composer.py)."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from accounts.tenancy import get_visible_or_404
from clusters.models import Cluster, ClusterAccount
from jobs import actions, pollstate, queries, slurm
from jobs.models import QueueSummary

PAGE_SIZE = 50  # as Open OnDemand's Active Jobs; older ones on the next pages


def _context(request, tenant_slug, cluster_slug):
    cluster = get_visible_or_404(Cluster.objects.select_related("tenant"), request.user, tenant__slug=tenant_slug, slug=cluster_slug)
    account = ClusterAccount.objects.filter(cluster=cluster, user=request.user).first()
    is_admin = queries.is_tenant_admin(request.user, cluster)
    return cluster, account, is_admin


def _active_account(account):
    if account is None or account.state != ClusterAccount.State.ACTIVE:
        raise PermissionDenied("You have no active account on this cluster.")
    return account


@login_required
def job_list(request, tenant_slug, cluster_slug):
    cluster, account, is_admin = _context(request, tenant_slug, cluster_slug)
    scope = "all" if request.GET.get("scope") == "all" and is_admin else "mine"
    filters = {k: request.GET.get(k, "").strip() for k in ("state", "partition", "name", "user")}
    jobs = queries.filter_jobs(
        queries.visible_jobs(request.user, cluster, every_user=scope == "all", is_admin=is_admin, account=account), state=filters["state"],
        partition=filters["partition"], name=filters["name"], posix_user=filters["user"] if scope == "all" else None,
    )
    cursor = request.GET.get("cursor", "")
    try:
        page, next_cursor = queries.newest_first_page(jobs, cursor, PAGE_SIZE)
    except ValueError:
        raise Http404("No such page of jobs.") from None
    without_cursor = request.GET.copy()
    without_cursor.pop("cursor", None)
    context = {
        "cluster": cluster, "tenant": cluster.tenant, "account": account, "is_admin": is_admin, "scope": scope,
        "filters": filters, "jobs": page, "query": request.GET.urlencode(), "first_page_query": without_cursor.urlencode(),
        "next_cursor": next_cursor, "is_first_page": not cursor,
        # Jobs of people outside the tenant are not listed, only counted.
        "summary": QueueSummary.objects.filter(cluster=cluster).first() if scope == "all" else None,
    }
    context["poll_state"] = pollstate.read(cluster)  # a banner while Slurm does not answer the poller
    template = "jobs/_job_table.html" if request.headers.get("HX-Request") else "jobs/job_list.html"
    return render(request, template, context)


def _output(account, job, poll_state, lines=200, *, find_file=True) -> dict:
    """The output panel: {"text": the file's last lines, "note": why there are none, in words}."""
    if account is None or account.state != ClusterAccount.State.ACTIVE:
        return {"text": "", "note": "You have no active account on this cluster to read the output with."}
    if job.state == "PENDING" or (job.start_time is None and job.state in queries.ACTIVE_STATES):
        return {"text": "", "note": "No output yet: the job has not started."}
    if poll_state and poll_state.failing and not job.stdout_path:
        return {"text": "", "note": poll_state.error}  # finding the file needs Slurm: do not wait ~20 s for it to time out again
    try:
        text = actions.output_tail(account, job, lines, find_file=find_file)
    except actions.OutputMissing:
        if job.state in queries.ACTIVE_STATES:
            return {"text": "", "note": "No output yet: the job has not written its output file."}
        return {"text": "", "note": f"The output file {job.stdout_path} is not there any more (moved or deleted)."}
    except (actions.JobActionError, slurm.SlurmUnavailable) as exc:
        return {"text": "", "note": str(exc)}
    return {"text": text, "note": "" if text else "The output file is empty so far."}


# How long a job page trusts its last read of Slurm: the page refreshes every 5 s, and on an SSM cluster each
# read is a SendCommand. A job that has left the queue is asked about once an hour at most (Slurm has
# usually purged it: the answer is only worth having for the output file of a job started from a terminal).
READ_AGAIN_AFTER = {"in_queue": 10, "left": 3600}


def _refreshed(account, job, poll_state):
    """The job as Slurm has it now, for the viewer's own job while Slurm still holds it: the cached row is
    updated too, so the list never contradicts this page (state, exit code, output file of a job submitted
    from the terminal, which squeue does not report). Returns (job, whether Slurm was asked, now or a moment ago)."""
    if (account is None or account.state != ClusterAccount.State.ACTIVE or job.owner_id != account.pk
            or (poll_state and poll_state.failing) or not (job.in_queue or not job.stdout_path)):
        return job, False
    if not cache.add(f"clusterra:job-read:{job.pk}", 1, READ_AGAIN_AFTER["in_queue" if job.in_queue else "left"]):
        return job, True  # read a moment ago: the cache row has what Slurm said
    try:
        return actions.sync_job(account, job.job_id) or job, True
    except (actions.JobActionError, slurm.SlurmUnavailable):
        return job, True  # the cache's word; the Slurm status banner says why


def _slurm_unavailable(request, cluster, exc, back_url):
    """Slurm itself did not answer an action: a 503 naming the cause, not a 500 and not \"Slurm refused\"."""
    return render(request, "jobs/slurm_unavailable.html", {"cluster": cluster, "tenant": cluster.tenant, "error": str(exc),
                                                           "back_url": back_url}, status=503)


@login_required
def job_detail(request, tenant_slug, cluster_slug, job_id):
    cluster, account, is_admin = _context(request, tenant_slug, cluster_slug)
    job = queries.job_for(request.user, cluster, job_id)
    terminal_url = reverse("terminal:page", args=[tenant_slug, cluster_slug])
    poll_state = pollstate.read(cluster)
    job, asked = _refreshed(account, job, poll_state)
    context = {
        "cluster": cluster, "tenant": cluster.tenant, "account": account, "job": job, "is_admin": is_admin,
        "active": job.state in queries.ACTIVE_STATES, "output": _output(account, job, poll_state, find_file=not asked),
        "poll_state": poll_state,
        "can_cancel": account is not None and job.owner_id == account.pk and job.state in queries.CANCELLABLE_STATES,
        "terminal_url": f"{terminal_url}?cwd={job.work_dir}" if job.work_dir else terminal_url,
    }
    template = "jobs/_job_panel.html" if request.headers.get("HX-Request") else "jobs/job_detail.html"
    return render(request, template, context)


@login_required
@require_POST
def job_cancel(request, tenant_slug, cluster_slug, job_id):
    cluster, account, is_admin = _context(request, tenant_slug, cluster_slug)
    job = queries.job_for(request.user, cluster, job_id)
    try:
        actions.cancel_job(_active_account(account), job, actor=request.user, client_address=request.META.get("REMOTE_ADDR"))
        messages.success(request, f"Job {job.job_id} cancelled.")
    except slurm.SlurmUnavailable as exc:
        return _slurm_unavailable(request, cluster, exc, reverse("jobs:detail", args=[tenant_slug, cluster_slug, job.job_id]))
    except actions.JobActionError as exc:
        messages.error(request, f"Slurm refused: {exc}")
    return redirect("jobs:detail", tenant_slug, cluster_slug, job.job_id)
