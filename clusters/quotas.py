"""Quotas for the dashboard: each account's Slurm limits, fair-share and storage use, collected in the background.

What is collected, as the account's own POSIX user through the cluster's executor (argv lists, timeouts):

- `sacctmgr show assoc user=<u>`: the user's associations (account, partition) and their limits;
- `sshare --users=<u>`: fair-share and usage of those associations (TRES-minutes used against GrpTRESMins);
- `quota` (where it is installed and the filesystem has quotas for the user): used and limit per filesystem;
- `df -P -B1 -- <home> <shared roots>`: the filesystem of each directory, and its size and use, shown
  where there is no quota.

Parsers are pure functions (unit-tested on output captured from the local Slurm); collect() runs the
commands and stores an AccountUsage row. Pages read that row only: nothing here runs during a request.
A part that fails (slurmdbd down, quota hanging on NFS) keeps its previous values and is named in `error`.
"""

import logging
import re
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from clusters.executors import CommandResult, Executor, ExecutorError, executor_for
from clusters.models import AccountUsage, ClusterAccount
from jobs.slurm import SLURM_ENV, decode

logger = logging.getLogger(__name__)

# The association fields read from sacctmgr, in this order (limits are the ones after User/Partition/Share).
ASSOC_FIELDS = ["Cluster", "Account", "User", "Partition", "Share", "GrpJobs", "GrpSubmit", "GrpTRES", "GrpTRESMins",
                "GrpTRESRunMins", "GrpWall", "MaxJobs", "MaxSubmit", "MaxTRES", "MaxTRESPerNode", "MaxTRESMins", "MaxWall",
                "QOS", "DefaultQOS"]
LIMIT_FIELDS = ["GrpJobs", "GrpSubmit", "GrpTRES", "GrpTRESMins", "GrpTRESRunMins", "GrpWall", "MaxJobs", "MaxSubmit",
                "MaxTRES", "MaxTRESPerNode", "MaxTRESMins", "MaxWall"]
SSHARE_FIELDS = ["Account", "User", "Partition", "RawShares", "NormShares", "RawUsage", "EffectvUsage", "FairShare",
                 "GrpTRESMins", "GrpTRESRaw", "TRESRunMins"]
EXIT_NOT_FOUND = 127  # `env` could not find the program (runuser … env -i PROGRAM)


class CollectError(Exception):
    """One part could not be collected; str() is shown on the dashboard (to the account's owner)."""


# --- commands -------------------------------------------------------------------------------------
def sacctmgr_argv(username: str) -> list[str]:
    return ["sacctmgr", "--noheader", "--parsable2", "show", "assoc", f"user={username}", f"format={','.join(ASSOC_FIELDS)}"]


def sshare_argv(username: str) -> list[str]:
    return ["sshare", "--noheader", "--parsable2", f"--users={username}", f"--format={','.join(SSHARE_FIELDS)}"]


# -w: one line per filesystem; -p: grace as epoch seconds; -v: filesystems without usage too; -Q: no complaint when
# an NFS server's rquotad refuses; the mount point (not the device) names the filesystem, as df's "Mounted on" does.
QUOTA_ARGV = ["quota", "--no-wrap", "--raw-grace", "--verbose", "--quiet-refuse", "--show-mntpoint", "--hide-device"]


def df_argv(directories: list[str]) -> list[str]:
    return ["df", "-P", "-B1", "--", *directories]


# --- parsers (pure) -------------------------------------------------------------------------------
def _fields(line: str, names: list[str]) -> dict[str, str] | None:
    values = line.split("|")
    if len(values) != len(names):
        return None
    return dict(zip(names, (v.strip() for v in values), strict=True))


def parse_associations(output: bytes | str, username: str) -> list[dict]:
    """sacctmgr's association lines of `username`: [{"cluster", "account", "partition", "share", "limits",
    "qos", "default_qos"}], limits only where set ({"MaxWall": "2-00:00:00", "GrpTRES": "cpu=16,mem=64G", ...})."""
    text = output if isinstance(output, str) else decode(output)
    associations = []
    for line in text.splitlines():
        row = _fields(line, ASSOC_FIELDS)
        if row is None or row["User"] != username:
            continue
        associations.append({
            "cluster": row["Cluster"], "account": row["Account"], "partition": row["Partition"], "share": row["Share"],
            "limits": {name: row[name] for name in LIMIT_FIELDS if row[name]},
            "qos": [q for q in row["QOS"].split(",") if q], "default_qos": row["DefaultQOS"],
        })
    associations.sort(key=lambda a: (a["cluster"], a["account"], a["partition"]))
    return associations


def _float(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def parse_sshare(output: bytes | str, username: str) -> dict[tuple[str, str], dict]:
    """sshare's lines of `username` by (account, partition). Account lines (no user) and other users are skipped.

    fairshare is None where Slurm does not compute it: with priority/basic sshare leaves NormShares empty and
    prints a meaningless FairShare of 0.000000 (which would read as "used far more than your share").
    """
    text = output if isinstance(output, str) else decode(output)
    shares = {}
    for line in text.splitlines():
        row = _fields(line, SSHARE_FIELDS)
        if row is None or row["User"] != username:
            continue
        norm_shares = _float(row["NormShares"])
        shares[(row["Account"], row["Partition"])] = {
            "raw_shares": row["RawShares"], "norm_shares": norm_shares, "raw_usage": _float(row["RawUsage"]),
            "effective_usage": _float(row["EffectvUsage"]),
            "fairshare": _float(row["FairShare"]) if norm_shares is not None else None,
            "tres_mins_used": parse_tres(row["GrpTRESRaw"]), "tres_run_mins": parse_tres(row["TRESRunMins"]),
        }
    return shares


def parse_tres(value: str) -> dict[str, str]:
    """`cpu=16,mem=64G,gres/gpu=2` → {"cpu": "16", "mem": "64G", "gres/gpu": "2"}."""
    tres = {}
    for item in value.split(","):
        name, sep, amount = item.partition("=")
        if sep and name:
            tres[name.strip()] = amount.strip()
    return tres


@dataclass(frozen=True)
class QuotaLine:
    """One filesystem of `quota`: space in bytes (quota prints 1 KiB blocks), limits 0 when not set."""

    mounted_on: str
    used: int
    soft_limit: int
    hard_limit: int
    grace_until: int  # epoch seconds (-p); 0 when no grace period runs
    files: int
    file_soft_limit: int
    file_hard_limit: int

    @property
    def limited(self) -> bool:
        return bool(self.soft_limit or self.hard_limit)


# The eight numbers after the filesystem: blocks[*] quota limit grace files[*] quota limit grace (quota -p).
_QUOTA_LINE = re.compile(r"^\s*(?P<fs>\S.*?)\s+(?P<blocks>\d+)\*?\s+(?P<bsoft>\d+)\s+(?P<bhard>\d+)\s+(?P<bgrace>\d+)"
                         r"\s+(?P<files>\d+)\*?\s+(?P<isoft>\d+)\s+(?P<ihard>\d+)\s+(?P<igrace>\d+)\s*$")


def parse_quota(output: bytes | str) -> list[QuotaLine]:
    """`quota -w -p -v --show-mntpoint --hide-device` (quota-tools 4.x): one line per filesystem with quotas.

    No filesystem with quotas: quota prints nothing (and exits 1), or "Disk quotas for user u (uid n): none".
    """
    text = output if isinstance(output, str) else decode(output)
    lines = []
    for line in text.splitlines():
        match = _QUOTA_LINE.match(line)
        if match is None:
            continue  # the headings
        lines.append(QuotaLine(
            mounted_on=match["fs"], used=int(match["blocks"]) * 1024, soft_limit=int(match["bsoft"]) * 1024,
            hard_limit=int(match["bhard"]) * 1024, grace_until=int(match["bgrace"]), files=int(match["files"]),
            file_soft_limit=int(match["isoft"]), file_hard_limit=int(match["ihard"]),
        ))
    return lines


@dataclass(frozen=True)
class DfLine:
    filesystem: str
    total: int
    used: int
    available: int
    mounted_on: str


_DF_LINE = re.compile(r"^(?P<fs>.+?)\s+(?P<total>\d+)\s+(?P<used>\d+)\s+(?P<avail>\d+)\s+(?:\d+%|-)\s+(?P<mnt>/.*)$")


def parse_df(output: bytes | str) -> list[DfLine]:
    """`df -P -B1 -- DIR...`: one line per directory df could read, in the order given (the header skipped)."""
    text = output if isinstance(output, str) else decode(output)
    lines = []
    for line in text.splitlines():
        match = _DF_LINE.match(line)
        if match:
            lines.append(DfLine(match["fs"], int(match["total"]), int(match["used"]), int(match["avail"]), match["mnt"]))
    return lines


def df_failures(stderr: bytes | str, directories: list[str]) -> dict[str, str]:
    """Directories df complained about (`df: /fsx: No such file or directory`), with its complaint."""
    text = stderr if isinstance(stderr, str) else decode(stderr)
    failed = {}
    for directory in directories:
        for line in text.splitlines():
            for quoted in (directory, f"'{directory}'", f"‘{directory}’"):
                prefix = f"df: {quoted}: "
                if line.startswith(prefix):
                    failed[directory] = line[len(prefix):].strip()
    return failed


def storage_rows(directories: list[tuple[str, str]], df_lines: list[DfLine], df_errors: dict[str, str],
                 quota_lines: list[QuotaLine]) -> list[dict]:
    """One row per directory ((path, kind) in df's order): the user's quota on its filesystem where one is set,
    else the filesystem's own size and use."""
    quotas = {q.mounted_on: q for q in quota_lines if q.limited}
    readable = [d for d in directories if d[0] not in df_errors]
    if len(readable) != len(df_lines):  # cannot tell which line is whose
        raise CollectError(f"df printed {len(df_lines)} lines for {len(readable)} directories.")
    by_path = dict(zip((path for path, _ in readable), df_lines, strict=True))
    rows = []
    for path, kind in directories:
        line = by_path.get(path)
        if line is None:
            rows.append({"path": path, "kind": kind, "error": df_errors.get(path, "not readable")})
            continue
        row = {"path": path, "kind": kind, "filesystem": line.filesystem, "mounted_on": line.mounted_on, "error": ""}
        quota = quotas.get(line.mounted_on)
        if quota is not None:
            row.update(source="quota", used=quota.used, limit=quota.hard_limit or quota.soft_limit,
                       soft_limit=quota.soft_limit, grace_until=quota.grace_until, files=quota.files,
                       file_limit=quota.file_hard_limit or quota.file_soft_limit)
        else:
            row.update(source="filesystem", used=line.used, limit=line.total, available=line.available)
        rows.append(row)
    return rows


def merge_fairshare(associations: list[dict], shares: dict[tuple[str, str], dict]) -> list[dict]:
    return [{**a, "fairshare": shares.get((a["account"], a["partition"]))} for a in associations]


# --- collection -----------------------------------------------------------------------------------
def _run(executor: Executor, account: ClusterAccount, argv: list[str], *, slurm: bool = False) -> CommandResult:
    try:
        return executor.run(account, argv, env=SLURM_ENV if slurm else None, timeout=settings.QUOTA_COMMAND_TIMEOUT)
    except ExecutorError as exc:
        raise CollectError(str(exc)) from None


def _failed(result: CommandResult) -> CollectError:
    if result.returncode == EXIT_NOT_FOUND:
        return CollectError(f"{result.argv[0]} is not installed on the cluster.")
    return CollectError(result.error_text()[:500])


def collect_slurm(executor: Executor, account: ClusterAccount) -> tuple[list[dict], str]:
    """The associations with their fair-share, and what went wrong with sshare ("" if nothing)."""
    result = _run(executor, account, sacctmgr_argv(account.posix_username), slurm=True)
    if not result.ok:
        raise _failed(result)
    associations = parse_associations(result.stdout, account.posix_username)
    shares, problem = {}, ""
    if associations:
        try:
            result = _run(executor, account, sshare_argv(account.posix_username), slurm=True)
            if not result.ok:
                raise _failed(result)
            shares = parse_sshare(result.stdout, account.posix_username)
        except CollectError as exc:
            problem = f"fair-share (sshare): {exc}"
    return merge_fairshare(associations, shares), problem


def collect_storage(executor: Executor, account: ClusterAccount) -> tuple[list[dict], str]:
    """One row per directory (home, then the shared roots), and what went wrong with quota ("" if nothing)."""
    cluster = account.cluster
    directories = [(cluster.home_directory(account.posix_username), "home")]
    directories += [(root, "shared") for root in cluster.shared_roots if isinstance(root, str) and root.startswith("/")]
    paths = [path for path, _ in directories]
    df = _run(executor, account, df_argv(paths))
    lines, failures = parse_df(df.stdout), df_failures(df.stderr, paths)
    if not df.ok and not lines and len(failures) < len(paths):  # df itself failed, not (only) the directories
        raise _failed(df)
    quota_lines, problem = [], ""
    try:
        quota = _run(executor, account, QUOTA_ARGV)
        # quota exits 1 both when a limit is exceeded and when no filesystem has quotas: its output tells them apart.
        if quota.returncode != EXIT_NOT_FOUND:  # not installed: the filesystems' usage is all there is
            quota_lines = parse_quota(quota.stdout)
    except CollectError as exc:  # e.g. an NFS server's rquotad not answering: df's figures still stand
        problem = f"quota: {exc}"
    return storage_rows(directories, lines, failures, quota_lines), problem


def collect(account: ClusterAccount, executor: Executor | None = None) -> AccountUsage:
    """Collect and store one account's usage. Never raises for a cluster's or a command's failure: it is stored."""
    usage, _ = AccountUsage.objects.get_or_create(account=account)
    errors, collected = [], False
    try:
        executor = executor or executor_for(account.cluster)
    except ExecutorError as exc:
        errors.append(str(exc))
    else:
        # A part that fails keeps its last value; the row counts as collected if either part worked.
        for field, collect_part, label in (("associations", collect_slurm, "Slurm limits (sacctmgr)"),
                                           ("storage", collect_storage, "Storage (df, quota)")):
            try:
                value, problem = collect_part(executor, account)
            except CollectError as exc:
                errors.append(f"{label}: {exc}")
                continue
            setattr(usage, field, value)
            collected = True
            if problem:
                errors.append(problem)
    now = timezone.now()
    usage.attempted_at = now
    if collected:
        usage.collected_at = now
    usage.error = "; ".join(errors)
    usage.save()
    if errors:
        logger.info("quotas of %s on %s: %s", account.posix_username, account.cluster.slug, usage.error)
    return usage


def due_accounts():
    """Active accounts on clusters the poller polls (a cluster without polling may have no Slurm to ask)."""
    return (ClusterAccount.objects.filter(state=ClusterAccount.State.ACTIVE, cluster__poll_uid__isnull=False)
            .exclude(cluster__poll_posix_username="").select_related("cluster"))
