"""The write path for what users do to jobs: submit and cancel. Each runs Slurm as the user's own
POSIX account through the cluster's executor and writes an audit event."""

import dataclasses
import posixpath
from dataclasses import dataclass

from django.utils import timezone

from audit.services import record_event
from clusters.executors import CommandTooLarge, ExecutorError, executor_for
from clusters.models import ClusterAccount
from jobs import slurm, validation
from jobs.models import Job, JobSubmission
from jobs.queries import ACTIVE_STATES, ENDING_STATES

SUBMIT_TIMEOUT = 30


class JobActionError(Exception):
    """Slurm (or the executor) refused; the message is Slurm's own words where there are any."""

    def __init__(self, message: str, *, status: int = 400):
        super().__init__(message)
        self.status = status


class OutputMissing(JobActionError):
    """The job's output file is not there: not written yet (pending or just started) or moved away."""


@dataclass(kw_only=True)
class SubmitRequest(slurm.JobOptions):
    """A submission as the user asked for it (API body, web form, CLI), before validation."""

    script_path: str | None = None
    script: str | None = None
    working_directory: str | None = None


# The sbatch options of a request that are kept for "Resubmit" and in templates (environment values are not).
OPTION_FIELDS = [f.name for f in dataclasses.fields(slurm.JobOptions) if f.name != "environment"]


def allowed_roots(account: ClusterAccount) -> list[str]:
    return [account.cluster.home_directory(account.posix_username), *account.cluster.shared_roots]


def _options(account: ClusterAccount, request: SubmitRequest) -> tuple[slurm.SubmitOptions, str | None, bytes | None]:
    """Validate everything at the edge; raise JobRequestError naming the field."""
    roots = allowed_roots(account)
    if bool(request.script_path) == bool(request.script):
        raise validation.JobRequestError("script_path", "give exactly one of script_path (preferred) or script.")
    script_path = validation.clean_path("script_path", request.script_path, roots) if request.script_path else None
    stdin = validation.clean_inline_script(request.script) if request.script else None
    if request.working_directory:
        workdir = validation.clean_path("working_directory", request.working_directory, roots)
    else:
        workdir = posixpath.dirname(script_path) if script_path else roots[0]
    choice = {name: validation.clean_choice(name, getattr(request, name), *validation.PATTERNS[name]) for name in validation.PATTERNS}
    options = slurm.SubmitOptions(
        working_directory=workdir, name=validation.clean_name(request.name),
        **{name: validation.clean_count(name, getattr(request, name), most) for name, most in validation.MAX_COUNTS.items()},
        environment=validation.clean_environment(request.environment), **choice,
    )
    return options, script_path, stdin


def _run(account: ClusterAccount, argv: list[str], *, stdin: bytes | None = None, env=None):
    """Run argv as the user; slurm.SlurmUnavailable if Slurm itself does not answer (the caller's 503)."""
    try:
        result = executor_for(account.cluster).run(account, argv, stdin=stdin, env={**slurm.SLURM_ENV, **(env or {})},
                                                   timeout=SUBMIT_TIMEOUT)
    except CommandTooLarge as exc:
        raise JobActionError(str(exc), status=413) from None
    except ExecutorError as exc:
        raise JobActionError(str(exc), status=502) from None
    slurm.check_reachable(account.cluster.name, result)
    return result


def sync_job(account: ClusterAccount, job_id: str) -> Job | None:
    """Read one job with `scontrol show job` as the user and store what it says (submit, cancel, detail)."""
    record = _scontrol_record(account, job_id)
    if record is None:
        return None  # purged from slurmctld's memory: the cache keeps what the poller and sacct said
    return _store(account, slurm_id(record), record)


def _scontrol_record(account: ClusterAccount, job_id: str) -> dict[str, str] | None:
    """`scontrol show job` as the user: the exact record (a plain job or one array task), else the record whose
    own id was asked for (sbatch of an array returns the array's id, and its pending tasks share one record).
    None once slurmctld has forgotten the job."""
    result = _run(account, slurm.scontrol_show_job_argv(job_id))
    if not result.ok:
        return None
    records = slurm.parse_scontrol_show_job(result.stdout)
    return next((r for r in records if slurm_id(r) == job_id), None) or next((r for r in records if r.get("JobId") == job_id), None)


def read_job_request(account: ClusterAccount, job_id: str) -> SubmitRequest | None:
    """What `scontrol show job` (as the user) says a job asked for, as a request to submit it again: for
    jobs sbatch'ed outside the portal. None once slurmctld has forgotten the job."""
    record = _scontrol_record(account, job_id)
    return SubmitRequest(**slurm.request_fields(record)) if record else None


def slurm_id(record: dict[str, str]) -> str:
    if record.get("ArrayJobId") and record.get("ArrayTaskId"):
        task = record["ArrayTaskId"]
        return f"{record['ArrayJobId']}_{task}" if task.isdigit() else f"{record['ArrayJobId']}_[{task}]"
    return record.get("JobId", "")


def _store(account: ClusterAccount, job_id: str, r: dict[str, str]) -> Job | None:
    text = slurm._text
    code, sig = slurm._exit_code(r.get("ExitCode", ""))
    # COMPLETING has ended: its exit code is known. Pending and running ones report 0:0, which means nothing yet.
    ended = r.get("JobState") not in ACTIVE_STATES or r.get("JobState") in ENDING_STATES
    user = r.get("UserId", "").split("(", 1)[0]
    fields = dict(
        array_job_id=slurm._int(r.get("ArrayJobId", "")), array_task_id=text(r.get("ArrayTaskId", "")), posix_user=user,
        slurm_account=text(r.get("Account", "")), name=r.get("JobName", "")[:255], partition=text(r.get("Partition", "")),
        state=r.get("JobState", ""), reason=text(r.get("Reason", ""))[:255],
        submit_time=slurm.parse_epoch(r.get("SubmitTime", "")), start_time=slurm.parse_epoch(r.get("StartTime", "")),
        end_time=slurm.parse_epoch(r.get("EndTime", "")) if r.get("JobState") not in ("PENDING", "RUNNING") else None,
        time_limit=slurm.parse_duration(r.get("TimeLimit", "")), nodes=slurm._int(r.get("NumNodes", "")),
        cpus=slurm._int(r.get("NumCPUs", "")), gres=text(r.get("JOB_GRES", r.get("TresPerNode", "")))[:255],
        node_list=text(r.get("NodeList", ""))[:1024], work_dir=text(r.get("WorkDir", ""))[:4096],
        stdout_path=text(r.get("StdOut", ""))[:4096], stderr_path=text(r.get("StdErr", ""))[:4096],
        exit_code=code if ended else None, exit_signal=sig if ended else None, last_seen_at=timezone.now(),
        poll_digest="",  # the next poll writes the row again from squeue
    )
    mem = r.get("MinMemoryNode") or r.get("MinMemoryCPU")
    if mem:
        fields["memory_mb"] = slurm.parse_memory_mb(mem)
    if user == account.posix_username:
        fields["owner"] = account
    elif not Job.objects.filter(cluster=account.cluster, job_id=job_id).exists():
        return None  # another user's job the cache does not hold (not of this tenant): never stored
    job, _ = Job.objects.update_or_create(cluster=account.cluster, job_id=job_id, defaults=fields)
    return job


def submit_job(account: ClusterAccount, request: SubmitRequest, *, actor, client_address=None) -> Job:
    if account.state != ClusterAccount.State.ACTIVE:
        raise JobActionError("Your account on this cluster is not active.", status=403)
    options, script_path, stdin = _options(account, request)
    result = _run(account, slurm.sbatch_argv(options, script_path), stdin=stdin, env=options.environment)
    if not result.ok:
        raise JobActionError(slurm.refusal_text(result.stderr) or result.error_text())
    job_id = slurm.parse_sbatch(result.stdout)
    job = sync_job(account, job_id) or Job.objects.get_or_create(
        cluster=account.cluster, job_id=job_id,
        defaults={"owner": account, "posix_user": account.posix_username, "state": "PENDING", "last_seen_at": timezone.now()},
    )[0]
    # What was asked, for "Resubmit": the validated values, the working directory only if one was given.
    JobSubmission.objects.update_or_create(job=job, defaults={
        "options": {name: getattr(options, name) for name in OPTION_FIELDS},
        "working_directory": options.working_directory if request.working_directory else "",
        "script_path": script_path or "", "script": request.script if stdin is not None else "",
        "environment_names": sorted(options.environment),
    })
    record_event("job.submit", tenant=account.cluster.tenant, actor=actor, target=job, client_address=client_address,
                 data={"cluster": account.cluster.slug, "job_id": job_id, "script_path": script_path or "", "inline": stdin is not None,
                       "posix_user": account.posix_username})
    return job


def cancel_job(account: ClusterAccount, job: Job, *, actor, client_address=None) -> Job:
    result = _run(account, slurm.scancel_argv(job.job_id))
    if not result.ok:
        denied = "Access/permission denied" in result.error_text()
        raise JobActionError(result.error_text(), status=403 if denied else 400)
    record_event("job.cancel", tenant=account.cluster.tenant, actor=actor, target=job, client_address=client_address,
                 data={"cluster": account.cluster.slug, "job_id": job.job_id})
    return sync_job(account, job.job_id) or job


def output_tail(account: ClusterAccount, job: Job, lines: int, *, find_file: bool = True) -> str:
    """The last `lines` lines of the job's standard output, read as the user (so permissions apply).

    Without a known output file it asks Slurm for it first, unless `find_file` is False (the caller just did)."""
    if not job.stdout_path and find_file:
        job = sync_job(account, job.job_id) or job
    if not job.stdout_path:
        raise JobActionError("Slurm did not report an output file for this job.", status=404)
    # test -e first: a file that is not there yet (or any more) is not an error of tail's to show.
    result = _run(account, ["sh", "-c", 'test -e "$2" || exit 3; exec tail -n "$1" -- "$2"', "sh", str(lines), job.stdout_path])
    if result.returncode == 3 and not result.stdout:
        raise OutputMissing(f"The output file {job.stdout_path} does not exist yet or any more.", status=404)
    if not result.ok:
        raise JobActionError(result.error_text(), status=404)
    return result.stdout.decode("utf-8", "replace")
