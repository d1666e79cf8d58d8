"""Job pages: lists and details read the cache; submit and cancel go through jobs.actions."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from accounts.tenancy import get_visible_or_404
from clusters.models import Cluster, ClusterAccount
from jobs import actions, pollstate, queries, slurm, validation
from jobs.forms import SubmitForm
from jobs.models import Partition, QueueSummary

PAGE_SIZE = 100


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
        queries.visible_jobs(request.user, cluster, every_user=scope == "all"), state=filters["state"],
        partition=filters["partition"], name=filters["name"], posix_user=filters["user"] if scope == "all" else None,
    )
    context = {
        "cluster": cluster, "tenant": cluster.tenant, "account": account, "is_admin": is_admin, "scope": scope,
        "filters": filters, "jobs": jobs.order_by(*queries.NEWEST_FIRST)[:PAGE_SIZE], "query": request.GET.urlencode(),
        # Jobs of people outside the tenant are not listed, only counted.
        "summary": QueueSummary.objects.filter(cluster=cluster).first() if scope == "all" else None,
    }
    context["poll_state"] = pollstate.read(cluster)  # a banner while Slurm does not answer the poller
    template = "jobs/_job_table.html" if request.headers.get("HX-Request") else "jobs/job_list.html"
    return render(request, template, context)


def _output_tail(account, job, poll_state, lines=200) -> str:
    if account is None or account.state != ClusterAccount.State.ACTIVE:
        return ""
    if poll_state and poll_state.failing and not job.stdout_path:
        return f"[{poll_state.error}]"  # finding the file needs Slurm: do not wait ~20 s for it to time out again
    try:
        return actions.output_tail(account, job, lines)
    except (actions.JobActionError, slurm.SlurmUnavailable) as exc:
        return f"[{exc}]"


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
    context = {
        "cluster": cluster, "tenant": cluster.tenant, "account": account, "job": job, "is_admin": is_admin,
        "active": job.state in queries.ACTIVE_STATES, "output": _output_tail(account, job, poll_state), "poll_state": poll_state,
        "can_cancel": job.owner is not None and job.owner.user_id == request.user.pk and job.state in queries.ACTIVE_STATES,
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


@login_required
def job_submit(request, tenant_slug, cluster_slug):
    cluster, account, _is_admin = _context(request, tenant_slug, cluster_slug)
    account = _active_account(account)
    initial = {"script_path": cluster.home_directory(account.posix_username) + "/"}
    form = SubmitForm(request.POST or None, initial=initial)
    status = 200
    if request.method == "POST" and form.is_valid():
        data = {k: (v if v not in ("", None) else None) for k, v in form.cleaned_data.items()}
        try:
            job = actions.submit_job(account, actions.SubmitRequest(**data), actor=request.user,
                                     client_address=request.META.get("REMOTE_ADDR"))
        except validation.JobRequestError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.message)
        except actions.JobActionError as exc:
            form.add_error(None, f"Slurm refused: {exc}")
        except slurm.SlurmUnavailable as exc:
            form.add_error(None, f"{exc}. Nothing was submitted; try again in a minute.")
            status = 503
        else:
            messages.success(request, f"Submitted job {job.job_id}.")
            return redirect("jobs:detail", tenant_slug, cluster_slug, job.job_id)
    partitions = Partition.objects.filter(cluster=cluster)
    return render(request, "jobs/submit.html", {"cluster": cluster, "tenant": cluster.tenant, "form": form, "partitions": partitions},
                  status=status)
