"""The dashboard (the home page): what a person has on every cluster they can see, from caches only.

Every query is bounded (a few per cluster account, each LIMITed and served by an index); nothing here
runs a command on a cluster: jobs come from the job cache, the cluster's state from the poller's state
in Redis, quotas from AccountUsage rows (clusters/quotas.py collects them in the background).
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.utils import timezone
from django.utils.formats import number_format

from clusterra.durations import duration_words, slurm_duration
from clusters.models import AccountUsage, Cluster, ClusterAccount
from clusters.quotas import parse_tres
from jobs import pollstate
from jobs.models import Job
from jobs.queries import ACTIVE_STATES, NEWEST_FIRST
from jobs.slurm import parse_duration
from terminal.models import TerminalSession

JOBS_SHOWN = 10  # running/queued jobs, and finished ones, each
SESSIONS_SHOWN = 20

# --- quotas in words --------------------------------------------------------------------------------
# Association limits as sacctmgr names them, in the order shown, with what they mean for the person.
LIMIT_LABELS = {
    "MaxWall": "Time limit per job",
    "MaxTRES": "Resources per job",
    "MaxTRESPerNode": "Resources per node of a job",
    "MaxTRESMins": "Resource-time per job",
    "MaxJobs": "Running jobs at a time",
    "MaxSubmit": "Queued and running jobs at a time",
    "GrpTRES": "Resources in use at once, all jobs together",
    "GrpTRESRunMins": "Resource-time of running jobs together",
    "GrpJobs": "Running jobs, all together",
    "GrpSubmit": "Queued and running jobs, all together",
    "GrpWall": "Wall time of running jobs together",
    "GrpTRESMins": "Total resource-time",
}
TRES_NAMES = {"cpu": ("CPU", "CPUs"), "node": ("node", "nodes"), "gres/gpu": ("GPU", "GPUs"),
              "billing": ("billing unit", "billing units"), "energy": ("joule", "joules")}
FAIRSHARE_HELP = ("Slurm's fair-share factor, from 0 to 1: 0.5 means you have used exactly your share of the cluster "
                  "lately, more means less than your share (your jobs get a higher priority), less means more.")


def tres_words(value: str) -> str:
    """`cpu=16,mem=64G,gres/gpu=2` → `16 CPUs, 64G memory, 2 GPUs`."""
    parts = []
    for name, amount in parse_tres(value).items():
        if name == "mem":
            parts.append(f"{amount} memory" if amount[-1:].isalpha() else f"{amount}M memory")
        elif name in TRES_NAMES:
            one, many = TRES_NAMES[name]
            parts.append(f"{amount} {one if amount == '1' else many}")
        else:
            parts.append(f"{name} {amount}")
    return ", ".join(parts)


def tres_minutes_words(name: str, minutes: str | int | float) -> str:
    """`cpu`, 60000 → `60,000 CPU-minutes (1,000 CPU-hours)`: TRES-minutes as a person counts them."""
    try:
        count = int(float(minutes))
    except (TypeError, ValueError):
        return f"{name} {minutes}"
    unit = "MB" if name == "mem" else TRES_NAMES.get(name, (name, name))[0]
    text = f"{number_format(count, force_grouping=True)} {unit}-minutes"
    if count >= 600:
        text += f" ({number_format(count // 60, force_grouping=True)} {unit}-hours)"
    return text


def limit_text(name: str, value: str) -> str:
    if name in ("MaxWall", "GrpWall"):
        seconds = parse_duration(value)
        return value if seconds is None else slurm_duration(seconds)
    if name in ("MaxTRESMins", "GrpTRESMins", "GrpTRESRunMins"):
        return ", ".join(tres_minutes_words(n, amount) for n, amount in parse_tres(value).items())
    if name in ("MaxTRES", "MaxTRESPerNode", "GrpTRES"):
        return tres_words(value)
    return value


@dataclass
class Bar:
    label: str
    used: float
    limit: float
    text: str

    @property
    def percent(self) -> int:
        return min(100, round(100 * self.used / self.limit)) if self.limit else 0


def association_view(association: dict) -> dict:
    limits = association.get("limits") or {}
    rows = [(LIMIT_LABELS[name], limit_text(name, limits[name])) for name in LIMIT_LABELS if name in limits]
    share = association.get("fairshare") or {}
    bars = []
    used = share.get("tres_mins_used") or {}
    for name, amount in parse_tres(limits.get("GrpTRESMins") or "").items():  # usage against the total resource-time limit
        if amount.isdigit() and name in used:
            spent = float(used[name])
            bars.append(Bar(f"{TRES_NAMES.get(name, (name,))[0]}-time used", spent, float(amount),
                            f"{tres_minutes_words(name, spent)} of {tres_minutes_words(name, amount)}"))
    title = f"Slurm account {association.get('account', '')}"
    if association.get("partition"):
        title += f", partition {association['partition']}"
    fairshare = share.get("fairshare")
    return {"title": title, "cluster": association.get("cluster", ""), "limits": rows, "bars": bars,
            "fairshare": None if fairshare is None else f"{fairshare:.3f}", "qos": ", ".join(association.get("qos") or [])}


def storage_view(row: dict) -> dict:
    view = {"path": row.get("path", ""), "kind": "Home" if row.get("kind") == "home" else "Shared",
            "error": row.get("error", ""), "source": row.get("source", ""), "bar": None}
    if not view["error"] and row.get("limit"):
        what = "your quota" if row["source"] == "quota" else f"the whole filesystem {row.get('mounted_on', '')}: no quota"
        view["bar"] = Bar(f"{view['kind']} {view['path']}", float(row.get("used") or 0), float(row["limit"]), what)
    return view


def quota_view(usage: AccountUsage | None, now: datetime) -> dict:
    if usage is None or usage.collected_at is None:
        return {"collected": False, "error": usage.error if usage else "", "attempted_at": usage.attempted_at if usage else None}
    associations = [association_view(a) for a in usage.associations]
    return {
        "collected": True, "collected_at": usage.collected_at,
        "age": duration_words((now - usage.collected_at).total_seconds(), units=1),
        "associations": associations, "fairshare_computed": any(a["fairshare"] is not None for a in associations),
        "storage": [storage_view(s) for s in usage.storage],
        "error": usage.error, "attempted_at": usage.attempted_at, "fairshare_help": FAIRSHARE_HELP,
    }


# --- the page -------------------------------------------------------------------------------------
@dataclass
class ClusterRow:
    cluster: Cluster
    account: ClusterAccount | None
    polled: bool
    poll: pollstate.PollState | None
    quotas: dict = field(default_factory=dict)


def cluster_rows(user, now: datetime) -> list[ClusterRow]:
    clusters = list(Cluster.objects.visible_to(user).select_related("tenant"))
    accounts = {a.cluster_id: a for a in ClusterAccount.objects.filter(user=user, cluster__in=[c.pk for c in clusters])
                .select_related("usage")}
    polls = pollstate.read_many([c for c in clusters if c.is_polled])  # one Redis round trip for all of them
    rows = []
    for cluster in clusters:
        account = accounts.get(cluster.pk)
        usage = getattr(account, "usage", None) if account else None  # AccountUsage.DoesNotExist is an AttributeError
        rows.append(ClusterRow(cluster, account, cluster.is_polled, polls.get(cluster.pk), quota_view(usage, now) if account else {}))
    return rows


def my_jobs(accounts: list[ClusterAccount]) -> tuple[list[Job], list[Job]]:
    """(running and queued, recently finished) across the accounts, newest first: two LIMITed queries per account,
    each served by the (cluster, owner, submit time, id) index, merged here."""
    running, finished = [], []
    for account in accounts:
        mine = Job.objects.filter(cluster_id=account.cluster_id, owner_id=account.pk).order_by(*NEWEST_FIRST)
        # Listed by squeue (the partial index job_owner_queued: never the person's whole history) and not over:
        # squeue lists a finished job for a few minutes more (MinJobAge).
        running += mine.filter(in_queue=True, state__in=ACTIVE_STATES)[:JOBS_SHOWN]
        finished += mine.exclude(state__in=ACTIVE_STATES)[:JOBS_SHOWN]
    clusters = {account.cluster_id: account.cluster for account in accounts}
    for job in running + finished:
        job.cluster = clusters[job.cluster_id]  # for the links, without a query per job
    return _newest(running)[:JOBS_SHOWN], _newest(finished)[:JOBS_SHOWN]


def _newest(jobs: list[Job]) -> list[Job]:
    """NEWEST_FIRST in Python: by submit time, newest first, jobs without one last."""
    return sorted(jobs, key=lambda job: (job.submit_time is not None, job.submit_time or datetime.min.replace(tzinfo=UTC), job.pk), reverse=True)


def my_sessions(user, clusters: list[Cluster]) -> list[TerminalSession]:
    """Live and detached terminal sessions of `user` on these clusters (their tab may be closed)."""
    by_pk = {c.pk: c for c in clusters}
    sessions = list(TerminalSession.objects.filter(user=user, ended_at__isnull=True, cluster__in=list(by_pk))
                    .order_by("-started_at")[:SESSIONS_SHOWN])
    for session in sessions:
        session.cluster = by_pk[session.cluster_id]
    return sessions


def context(user) -> dict:
    now = timezone.now()
    rows = cluster_rows(user, now)
    accounts = [row.account for row in rows if row.account is not None]
    for row in rows:
        if row.account is not None:
            row.account.cluster = row.cluster
    running, finished = my_jobs(accounts)
    return {"rows": rows, "running_jobs": running, "finished_jobs": finished,
            "sessions": my_sessions(user, [row.cluster for row in rows]),
            "quota_rows": [row for row in rows if row.account is not None and row.account.state == ClusterAccount.State.ACTIVE]}
