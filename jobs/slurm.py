"""Slurm command builders and parsers. Pure functions: executors run the argv, these read the output.

Machine formats only, with the ASCII unit separator (0x1f) between fields and the free-text job name
last, so names with spaces, `|` or commas parse; times as epoch seconds (SLURM_TIME_FORMAT=%s).
"""

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

SEP = "\x1f"
SLURM_ENV = {"SLURM_TIME_FORMAT": "%s"}  # epoch seconds in every time field

_NULLS = {"", "N/A", "(null)", "None", "None assigned", "Unknown", "n/a"}


class SlurmParseError(ValueError):
    pass


# --- "Slurm is down" -------------------------------------------------------------------------------
SLURM_COMMANDS = frozenset({"squeue", "sbatch", "scancel", "scontrol", "sacct", "sinfo"})
# What the Slurm clients print when slurmctld (or, for sacct, slurmdbd) does not answer: stopped,
# restarting, hung or unreachable. Clients retry the connection for a while (MessageTimeout) first.
_UNREACHABLE = re.compile(
    r"Unable to contact slurm controller|Connection refused|Socket timed out|Zero Bytes were transmitted"
    r"|Unable to connect to database|Connection timed out|Transport endpoint is not connected",
    re.IGNORECASE,
)


class SlurmUnavailable(Exception):
    """Slurm itself did not answer (slurmctld down or unreachable): not the user's fault, retry later."""

    def __init__(self, cluster_name: str, cause: str):
        self.cluster_name, self.cause = cluster_name, cause
        super().__init__(f"Slurm on {cluster_name} is not answering (slurmctld unreachable: {cause})")


def unreachable_cause(argv, returncode: int, stderr: bytes) -> str | None:
    """The line of a failed Slurm command's stderr that says the controller is unreachable, if any."""
    if returncode == 0 or not argv or argv[0] not in SLURM_COMMANDS:
        return None
    for line in decode(stderr).splitlines():
        if _UNREACHABLE.search(line):
            return line.strip()[:300]
    return None


def check_reachable(cluster_name: str, result) -> None:
    """Raise SlurmUnavailable if `result` (an executor CommandResult) failed because Slurm is down."""
    cause = unreachable_cause(result.argv, result.returncode, result.stderr)
    if cause is not None:
        raise SlurmUnavailable(cluster_name, cause)


# --- small field parsers ------------------------------------------------------------------------
def _text(value: str) -> str:
    return "" if value in _NULLS else value


def _int(value: str) -> int | None:
    value = value.strip()
    return int(value) if value.isdigit() else None


def parse_epoch(value: str) -> datetime | None:
    """Epoch seconds (SLURM_TIME_FORMAT=%s); 0, N/A, Unknown and None mean no time."""
    value = value.strip()
    if not value.isdigit() or int(value) == 0:
        return None
    return datetime.fromtimestamp(int(value), tz=UTC)


_DURATION = re.compile(r"^(?:(?P<days>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?$")


def parse_duration(value: str) -> int | None:
    """Slurm durations in seconds: `MM:SS`, `HH:MM:SS`, `D-HH[:MM[:SS]]`, or a bare minute count.

    UNLIMITED, INVALID, N/A and the like give None.
    """
    value = value.strip()
    match = _DURATION.match(value)
    if not match:
        return None
    days = int(match["days"] or 0)
    parts = [int(p) for p in (match["a"], match["b"], match["c"]) if p is not None]
    if match["days"] is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    elif len(parts) == 2:
        hours, minutes, seconds = 0, *parts
    else:  # a bare number is minutes
        hours, minutes, seconds = 0, parts[0], 0
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


_MEMORY = re.compile(r"^(?P<n>\d+(?:\.\d+)?)(?P<unit>[KMGTP]?)(?:[nc]?)$")
_MB = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2, "P": 1024**3}


def parse_memory_mb(value: str) -> int | None:
    match = _MEMORY.match(value.strip())
    if not match:
        return None
    return int(float(match["n"]) * _MB[match["unit"]])


def _exit_code(value: str) -> tuple[int | None, int | None]:
    """`code:signal` → (code, signal)."""
    if ":" not in value:
        return _int(value), None
    code, sig = value.split(":", 1)
    return _int(code), _int(sig)


def _split_records(text: str, fields: int) -> list[list[str]]:
    """Lines of `fields` SEP-separated values, the last one free text that may even hold a newline."""
    records: list[list[str]] = []
    for line in text.split("\n"):
        if not line:
            continue
        if line.count(SEP) < fields - 1:
            if not records:
                raise SlurmParseError(f"Unexpected line in Slurm output: {line[:200]!r}")
            records[-1][-1] += "\n" + line  # a newline inside the job name
            continue
        records.append(line.split(SEP, fields - 1))
    return records


def decode(output: bytes) -> str:
    """Slurm output is bytes from users (job names, paths); invalid UTF-8 becomes U+FFFD."""
    return output.decode("utf-8", "replace")


# --- squeue ---------------------------------------------------------------------------------------
SQUEUE_FIELDS = ["%i", "%F", "%K", "%u", "%a", "%P", "%T", "%r", "%V", "%S", "%e", "%l", "%M", "%D", "%C", "%m", "%N", "%Z", "%j"]


@dataclass
class QueuedJob:
    job_id: str
    array_job_id: int | None
    array_task_id: str
    user: str
    account: str
    partition: str
    state: str
    reason: str
    submit_time: datetime | None
    start_time: datetime | None
    end_time: datetime | None
    time_limit: int | None
    time_used: int | None
    nodes: int | None
    cpus: int | None
    memory_mb: int | None
    node_list: str
    work_dir: str
    name: str


def squeue_argv(*, states: str = "all", user: str | None = None, job_ids: list[str] | None = None) -> list[str]:
    argv = ["squeue", "--noheader", "--array", f"--states={states}", "--format=" + SEP.join(SQUEUE_FIELDS)]
    if user:
        argv.append(f"--user={user}")
    if job_ids:
        argv.append("--jobs=" + ",".join(job_ids))
    return argv


def parse_squeue(output: bytes) -> list[QueuedJob]:
    return [queued_job(f) for f in squeue_records(output)]


def squeue_records(output: bytes) -> list[list[str]]:
    """squeue's output as raw field lists in SQUEUE_FIELDS order (the poller parses only the ones that changed)."""
    return _split_records(decode(output), len(SQUEUE_FIELDS))


def queued_job(f: list[str]) -> QueuedJob:
    is_array = _text(f[2]) != ""  # %F is the job's own id when it is not an array task
    return QueuedJob(
        job_id=f[0], array_job_id=_int(f[1]) if is_array else None, array_task_id=_text(f[2]),
        user=f[3], account=_text(f[4]), partition=f[5], state=f[6], reason=_text(f[7]),
        submit_time=parse_epoch(f[8]), start_time=parse_epoch(f[9]), end_time=parse_epoch(f[10]),
        time_limit=parse_duration(f[11]), time_used=parse_duration(f[12]), nodes=_int(f[13]), cpus=_int(f[14]),
        memory_mb=parse_memory_mb(f[15]), node_list=_text(f[16]), work_dir=_text(f[17]), name=f[18],
    )


# --- sbatch ---------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class JobOptions:
    """The sbatch options a user may ask for: in a submit request (jobs.actions.SubmitRequest) and,
    validated, in SubmitOptions."""

    name: str | None = None
    partition: str | None = None
    time_limit: str | None = None
    nodes: int | None = None
    ntasks: int | None = None
    cpus_per_task: int | None = None
    memory: str | None = None
    gpus: str | None = None
    array: str | None = None
    dependency: str | None = None
    account: str | None = None
    qos: str | None = None
    environment: dict[str, str] = field(default_factory=dict)


@dataclass(kw_only=True)
class SubmitOptions(JobOptions):
    """What goes to sbatch. Values are validated by jobs.validation before they get here."""

    working_directory: str
    output: str | None = None
    error: str | None = None


def sbatch_argv(options: SubmitOptions, script_path: str | None = None) -> list[str]:
    """`sbatch --parsable ...`; without a script path the script comes on standard input."""
    argv = ["sbatch", "--parsable", f"--chdir={options.working_directory}"]
    for flag, value in [
        ("--job-name", options.name), ("--partition", options.partition), ("--time", options.time_limit),
        ("--nodes", options.nodes), ("--ntasks", options.ntasks), ("--cpus-per-task", options.cpus_per_task),
        ("--mem", options.memory), ("--gpus", options.gpus), ("--array", options.array),
        ("--dependency", options.dependency), ("--account", options.account), ("--qos", options.qos),
        ("--output", options.output), ("--error", options.error),
    ]:
        if value is not None and value != "":
            argv.append(f"{flag}={value}")
    if script_path:
        argv += ["--", script_path]
    return argv


_CLIENT_PREFIX = re.compile(r"^(?:sbatch|srun|salloc|scancel|scontrol): (?:error: |fatal: )?", re.IGNORECASE)
_SUBMISSION_FAILED = re.compile(r"^Batch job submission failed: ", re.IGNORECASE)


def refusal_text(output: bytes | str) -> str:
    """sbatch's complaint in words, said once: `sbatch: error: invalid partition specified: x` and
    `sbatch: error: Batch job submission failed: Invalid partition name specified` become
    "Invalid partition name specified (invalid partition specified: x)"."""
    text = decode(output) if isinstance(output, bytes) else output
    lines: list[str] = []
    for line in text.splitlines():
        line = _CLIENT_PREFIX.sub("", line.strip()).strip()
        if line and line.lower() not in (seen.lower() for seen in lines):
            lines.append(line)
    # The final "submission failed" line is Slurm's verdict; the lines before it are the details.
    verdicts = [_SUBMISSION_FAILED.sub("", line) for line in lines if _SUBMISSION_FAILED.match(line)]
    details = [line for line in lines if not _SUBMISSION_FAILED.match(line)]
    if verdicts:
        return verdicts[-1] + (f" ({'; '.join(details)})" if details else "")
    return "; ".join(details)


def parse_sbatch(output: bytes) -> str:
    """`--parsable` prints `jobid` or `jobid;cluster`."""
    text = decode(output).strip()
    job_id = text.split(";", 1)[0]
    if not job_id.isdigit():
        raise SlurmParseError(f"sbatch printed no job id: {text[:200]!r}")
    return job_id


# --- scontrol show job ------------------------------------------------------------------------------
_KEY = re.compile(r"(?:^|(?<=\s))([A-Z][A-Za-z0-9_:/]*)=")


def scontrol_show_job_argv(job_id: str) -> list[str]:
    return ["scontrol", "--details", "show", "job", job_id]


def parse_scontrol_record(text: str) -> dict[str, str]:
    """`Key=Value Key2=Value with spaces` lines → dict. Keys start with a capital letter."""
    record: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        matches = list(_KEY.finditer(line))
        for i, match in enumerate(matches):
            end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
            record[match[1]] = line[match.end():end].rstrip()
    return record


def parse_scontrol_show_job(output: bytes) -> list[dict[str, str]]:
    """One dict per job (an array prints a record per task, separated by blank lines)."""
    blocks = re.split(r"\n\s*\n", decode(output).strip())
    return [parse_scontrol_record(block) for block in blocks if block.strip()]


def request_fields(record: dict[str, str]) -> dict:
    """The submit options a job's `scontrol show job` record shows, named as in jobs.actions.SubmitRequest.

    Command= is the script's path for a job submitted by path ("(null)" for a script on standard input).
    Left out: the array (a task's record no longer shows the whole range), the dependency (already met or
    about to be), and memory per CPU (the form asks for memory per node).
    """
    def value(key: str) -> str | None:
        return _text(record.get(key, "").strip()) or None

    command, gres = value("Command"), value("TresPerJob") or ""
    memory = value("MinMemoryNode")
    return {
        "script_path": command if command and command.startswith("/") else None,
        "working_directory": value("WorkDir"), "name": value("JobName"), "partition": value("Partition"),
        "time_limit": value("TimeLimit") if parse_duration(record.get("TimeLimit", "")) is not None else None,
        "nodes": _int(record.get("NumNodes", "")), "ntasks": _int(record.get("NumTasks", "")),
        "cpus_per_task": _int(record.get("CPUs/Task", "")), "memory": memory if memory not in (None, "0") else None,
        "gpus": gres.removeprefix("gres:gpu:") if gres.startswith("gres:gpu:") and gres != "gres:gpu:0" else None,
        "account": value("Account"), "qos": value("QOS"),
    }


# --- scancel -------------------------------------------------------------------------------------
def scancel_argv(job_id: str) -> list[str]:
    return ["scancel", job_id]


# --- sacct ---------------------------------------------------------------------------------------
SACCT_FIELDS = ["JobID", "JobIDRaw", "State", "ExitCode", "Submit", "Start", "End", "Elapsed", "Timelimit",
                "NNodes", "NCPUS", "NodeList", "Partition", "User", "WorkDir", "JobName"]


@dataclass
class AccountedJob:
    job_id: str
    job_id_raw: str
    state: str
    exit_code: int | None
    exit_signal: int | None
    submit_time: datetime | None
    start_time: datetime | None
    end_time: datetime | None
    elapsed: int | None
    time_limit: int | None
    nodes: int | None
    cpus: int | None
    node_list: str
    partition: str
    user: str
    work_dir: str
    name: str


def sacct_argv(job_ids: list[str]) -> list[str]:
    """With the jobs' steps: a job cancelled while it ran says ExitCode 0:0 on its own line and 0:15 (the
    SIGTERM) on its batch step's; parse_sacct takes the step's signal."""
    return ["sacct", "--noheader", "--parsable2", f"--delimiter={SEP}",
            "--format=" + ",".join(SACCT_FIELDS), "--jobs=" + ",".join(job_ids)]


def parse_sacct(output: bytes) -> list[AccountedJob]:
    """One AccountedJob per job (steps such as `123.batch` are folded into their job, not returned)."""
    jobs: list[AccountedJob] = []
    batch_exits: dict[str, tuple[int | None, int | None]] = {}
    for f in _split_records(decode(output), len(SACCT_FIELDS)):
        code, sig = _exit_code(f[3])
        if "." in f[0]:
            job_id, step = f[0].rsplit(".", 1)
            if step == "batch":
                batch_exits[job_id] = (code, sig)
            continue
        jobs.append(AccountedJob(
            job_id=f[0], job_id_raw=f[1], state=f[2].split(" ", 1)[0],  # "CANCELLED by 1001" → CANCELLED
            exit_code=code, exit_signal=sig, submit_time=parse_epoch(f[4]), start_time=parse_epoch(f[5]),
            end_time=parse_epoch(f[6]), elapsed=parse_duration(f[7]), time_limit=parse_duration(f[8]),
            nodes=_int(f[9]), cpus=_int(f[10]), node_list=_text(f[11]), partition=f[12], user=f[13],
            work_dir=_text(f[14]), name=f[15],
        ))
    for job in jobs:
        step_code, step_signal = batch_exits.get(job.job_id, (None, None))
        if step_signal and not job.exit_signal and not job.exit_code:
            job.exit_code, job.exit_signal = step_code, step_signal
    return jobs


# --- partitions ------------------------------------------------------------------------------------
SINFO_FIELDS = ["%P", "%a", "%l", "%F", "%C", "%D"]


@dataclass
class PartitionState:
    name: str
    is_default: bool
    available: bool
    time_limit: int | None
    nodes_allocated: int
    nodes_idle: int
    nodes_other: int
    nodes_total: int
    cpus_allocated: int
    cpus_idle: int
    cpus_other: int
    cpus_total: int


def sinfo_argv() -> list[str]:
    return ["sinfo", "--noheader", "--format=" + SEP.join(SINFO_FIELDS)]


def _counts(value: str) -> tuple[int, int, int, int]:
    parts = value.split("/")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise SlurmParseError(f"Expected A/I/O/T counts, got {value!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def parse_sinfo(output: bytes) -> list[PartitionState]:
    partitions = []
    for f in _split_records(decode(output), len(SINFO_FIELDS)):
        nodes, cpus = _counts(f[3]), _counts(f[4])
        partitions.append(PartitionState(
            name=f[0].rstrip("*"), is_default=f[0].endswith("*"), available=f[1] == "up",
            time_limit=parse_duration(f[2]), nodes_allocated=nodes[0], nodes_idle=nodes[1], nodes_other=nodes[2],
            nodes_total=nodes[3], cpus_allocated=cpus[0], cpus_idle=cpus[1], cpus_other=cpus[2], cpus_total=cpus[3],
        ))
    return partitions
