"""The job composer: submit a job from a form, a saved template or an earlier job (issue 12 §3).

GET prefills the form from `?template=<id>` (one of the user's templates), `?from_job=<job id>` (resubmit
one of the user's jobs) or `?script_path=<path>` (the file browser's "Submit this script"). Submitting goes
through jobs.actions.submit_job and templates through jobs.templates_actions: those write the audit events.
"""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_POST

from accounts.tenancy import get_visible_or_404
from clusterra.durations import slurm_duration
from clusters.models import Cluster, ClusterAccount
from jobs import actions, queries, slurm, templates_actions, validation
from jobs.forms import SubmitForm
from jobs.models import Job, JobSubmission, JobTemplate, Partition


def _cluster_and_account(request, tenant_slug, cluster_slug) -> tuple[Cluster, ClusterAccount]:
    """The cluster (a 404 outside the user's tenants) and the user's active account on it (else a 403)."""
    cluster = get_visible_or_404(Cluster.objects.select_related("tenant"), request.user, tenant__slug=tenant_slug, slug=cluster_slug)
    account = ClusterAccount.objects.filter(cluster=cluster, user=request.user).first()
    if account is None or account.state != ClusterAccount.State.ACTIVE:
        raise PermissionDenied("You have no active account on this cluster.")
    account.cluster = cluster  # the one already read, with its tenant
    return cluster, account


def _own_template(request, cluster: Cluster, pk) -> JobTemplate:
    """One of the user's own templates on this cluster; everyone else's is a 404."""
    return get_object_or_404(JobTemplate.objects.visible_to(request.user), cluster=cluster, owner=request.user, pk=pk)


def _own_job(request, account: ClusterAccount, job_id: str) -> Job:
    """One of the user's own jobs: an admin may see other people's jobs, not resubmit or copy them."""
    if "\x00" in job_id:  # no job has one, and PostgreSQL cannot compare with it
        raise Http404("No such job.")
    job = queries.job_for(request.user, account.cluster, job_id)
    if job.owner_id != account.pk:
        raise Http404("No such job.")
    return job


# --- starter scripts -------------------------------------------------------------------------------
def starter_script(partition: Partition | None) -> str:
    """A first script for a partition, from what the last poll said about it."""
    lines = ["#!/bin/bash"]
    if partition is not None:
        lines.append(f"#SBATCH --partition={partition.name}")
        if partition.time_limit:
            lines.append(f"#SBATCH --time={slurm_duration(partition.time_limit)}")
        lines += ["#SBATCH --nodes=1", "#SBATCH --ntasks=1", ""]
        per_node = partition.cpus_total // partition.nodes_total if partition.nodes_total else 0
        lines.append(f"# {partition.name}: time limit {slurm_duration(partition.time_limit)}, {partition.nodes_total} node(s)"
                     + (f" with {per_node} CPUs each" if per_node else "") + " (as of the last poll).")
        if partition.time_limit:
            lines.append("# A shorter --time often starts sooner.")
    lines += ["# Fields filled in on the form take precedence over these #SBATCH lines.", "",
              'echo "Job $SLURM_JOB_ID on $(hostname), started $(date)"', ""]
    return "\n".join(lines)


def starter_scripts(partitions: list[Partition]) -> dict[str, str]:
    """Per partition name; "" (partition not set) gets the default partition's."""
    default = next((p for p in partitions if p.is_default), partitions[0] if partitions else None)
    return {"": starter_script(default), **{p.name: starter_script(p) for p in partitions}}


# --- where a prefilled form comes from --------------------------------------------------------------
def _stored_options(options: dict) -> dict:
    """Stored options (JSON) that a request still has: a field removed since is ignored, not a crash."""
    return {name: options[name] for name in actions.OPTION_FIELDS if name in options}


def _stored_request(stored: JobTemplate | JobSubmission) -> actions.SubmitRequest:
    """A saved template or a portal job's submission (the same fields) as a request."""
    return actions.SubmitRequest(**_stored_options(stored.options), working_directory=stored.working_directory or None,
                                 script_path=stored.script_path or None, script=stored.script or None)


def _request_from_job(account: ClusterAccount, job: Job) -> tuple[actions.SubmitRequest, str]:
    """What to submit again, and a note for the user.

    A portal job: what was asked (JobSubmission). A job sbatch'ed elsewhere: what Slurm still knows of it
    (scontrol's Command= is its script), else what the job cache holds, without a script.
    """
    submission = JobSubmission.objects.filter(job=job).first()
    if submission is not None:
        note = ""
        if submission.environment_names:
            note = ("It was submitted with the environment variables " + ", ".join(submission.environment_names)
                    + "; their values are not kept, so set them in the script.")
        return _stored_request(submission), note
    try:
        from_slurm = actions.read_job_request(account, job.job_id)
    except (actions.JobActionError, slurm.SlurmUnavailable) as exc:
        from_slurm, why = None, f"Slurm could not be asked about it ({exc})"
    else:
        why = "Slurm no longer remembers it"
    if from_slurm is not None:
        if from_slurm.script_path:
            return from_slurm, ""
        return from_slurm, "Its script came on standard input, which Slurm does not keep: choose or write the script."
    single_node = job.nodes in (None, 1)
    cached = actions.SubmitRequest(
        name=job.name or None, partition=job.partition or None, nodes=job.nodes,
        time_limit=slurm_duration(job.time_limit) if job.time_limit else None,
        cpus_per_task=job.cpus if single_node else None, working_directory=job.work_dir or None,
    )
    return cached, f"{why}: the settings below come from the job list; choose the script."


# --- pages -------------------------------------------------------------------------------------------
def _page(request, cluster, account, form, *, partitions, status=200, note="", starters=None):
    templates = list(JobTemplate.objects.visible_to(request.user).filter(cluster=cluster, owner=request.user))
    for template in templates:  # as Slurm writes it: "5" (minutes) is shown as 5:00
        asked = template.options.get("time_limit") or ""
        seconds = slurm.parse_duration(asked)
        template.time_limit_text = slurm_duration(seconds) if seconds is not None else asked
    return render(request, "jobs/submit.html", {
        "cluster": cluster, "tenant": cluster.tenant, "account": account, "form": form, "partitions": partitions,
        "starters": starters or starter_scripts(partitions), "templates": templates, "note": note,
    }, status=status)


def _initial(request, cluster, account, partitions) -> tuple[dict, str]:
    """Form values for a GET, and a note to show above the form."""
    default = next((p.name for p in partitions if p.is_default), "")
    if "template" in request.GET:
        pk = request.GET["template"]
        if not pk.isdigit():
            raise Http404("No such template.")
        template = _own_template(request, cluster, pk)
        return SubmitForm.initial_from(_stored_request(template)), f"From your template “{template.name}”."
    if "from_job" in request.GET:
        job = _own_job(request, account, request.GET["from_job"])
        submit_request, note = _request_from_job(account, job)
        return SubmitForm.initial_from(submit_request), " ".join(filter(None, [f"Resubmitting job {job.job_id}.", note]))
    if "script_path" in request.GET:
        # A script from the file browser: its own #SBATCH lines decide unless the form says otherwise.
        return {"mode": "path", "script_path": request.GET["script_path"]}, ""
    return {"mode": "path", "script_path": cluster.home_directory(account.posix_username) + "/", "partition": default}, ""


@login_required
def submit(request, tenant_slug, cluster_slug):
    cluster, account = _cluster_and_account(request, tenant_slug, cluster_slug)
    partitions = list(Partition.objects.filter(cluster=cluster))
    if request.method != "POST":
        initial, note = _initial(request, cluster, account, partitions)
        starters = starter_scripts(partitions)
        if not initial.get("script"):  # the editor starts with the chosen partition's starter script
            initial["script"] = starters.get(initial.get("partition") or "", starters[""])
        return _page(request, cluster, account, SubmitForm(initial=initial, partitions=partitions), partitions=partitions,
                     note=note, starters=starters)
    form = SubmitForm(request.POST, partitions=partitions)
    status = 200
    if form.is_valid():
        try:
            job = actions.submit_job(account, form.submit_request(), actor=request.user, client_address=request.META.get("REMOTE_ADDR"))
        except validation.JobRequestError as exc:
            form.add_request_error(exc)
        except actions.JobActionError as exc:
            form.add_error(None, f"Slurm refused the job: {exc}")
        except slurm.SlurmUnavailable as exc:
            form.add_error(None, f"{exc}. Nothing was submitted; try again in a minute.")
            status = 503
        else:
            messages.success(request, f"Submitted job {job.job_id}.")
            return redirect("jobs:detail", tenant_slug, cluster_slug, job.job_id)
    return _page(request, cluster, account, form, partitions=partitions, status=status)


@login_required
@require_POST
def save_template(request, tenant_slug, cluster_slug):
    """The composer's "Save as template": the form as it is, under the name given."""
    cluster, account = _cluster_and_account(request, tenant_slug, cluster_slug)
    partitions = list(Partition.objects.filter(cluster=cluster))
    form = SubmitForm(request.POST, partitions=partitions)
    if form.is_valid():
        try:
            template = templates_actions.save_template(account, form.cleaned_data["template_name"], form.submit_request(),
                                                       actor=request.user, client_address=request.META.get("REMOTE_ADDR"))
        except validation.JobRequestError as exc:
            form.add_request_error(exc)
        else:
            messages.success(request, f"Saved the template “{template.name}”.")
            return redirect(_composer_url(cluster, template=template.pk))
    return _page(request, cluster, account, form, partitions=partitions)


@login_required
@require_POST
def save_job_template(request, tenant_slug, cluster_slug, job_id):
    """The job page's "Save as template": named after the job; without a known script, the composer asks."""
    cluster, account = _cluster_and_account(request, tenant_slug, cluster_slug)
    job = _own_job(request, account, job_id)
    submit_request, _note = _request_from_job(account, job)
    if not (submit_request.script_path or submit_request.script):
        messages.error(request, f"Slurm does not say which script job {job.job_id} ran: choose it, then save the template here.")
        return redirect(_composer_url(cluster, from_job=job.job_id))
    name = templates_actions.free_name(account, request.user, job.name or f"Job {job.job_id}")
    try:
        template = templates_actions.save_template(account, name, submit_request, actor=request.user,
                                                   client_address=request.META.get("REMOTE_ADDR"), from_job=job.job_id)
    except validation.JobRequestError as exc:
        messages.error(request, f"Job {job.job_id} cannot be saved as a template: {exc.field} {exc.message}")
        return redirect(_composer_url(cluster, from_job=job.job_id))
    messages.success(request, f"Saved job {job.job_id} as the template “{template.name}”.")
    return redirect(_composer_url(cluster, template=template.pk))


@login_required
@require_POST
def delete_template(request, tenant_slug, cluster_slug, pk):
    cluster, _account = _cluster_and_account(request, tenant_slug, cluster_slug)
    template = _own_template(request, cluster, pk)
    templates_actions.delete_template(template, actor=request.user, client_address=request.META.get("REMOTE_ADDR"))
    messages.success(request, f"Deleted the template “{template.name}”.")
    return redirect("jobs:submit", tenant_slug, cluster_slug)


def _composer_url(cluster: Cluster, **query) -> str:
    return reverse("jobs:submit", args=[cluster.tenant.slug, cluster.slug]) + "?" + urlencode(query)
