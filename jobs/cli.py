"""`clusterra`: the command-line client of the REST API (/v1). Standard library only.

    clusterra login --url https://portal.example.org        # asks for an API token, checks it, stores it
    clusterra clusters
    clusterra job submit --script-path ~/run.sh --partition batch
    clusterra job list | show ID | cancel ID | output ID [--follow]

Tables for people, --json for scripts; errors print the server's message and exit non-zero.
Config: ~/.config/clusterra/config.json (0600), or CLUSTERRA_URL / CLUSTERRA_TOKEN / CLUSTERRA_CLUSTER.
"""

import argparse
import getpass
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path

TIMEOUT = 30
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


class CliError(Exception):
    pass


def config_path() -> Path:
    if os.environ.get("CLUSTERRA_CONFIG"):
        return Path(os.environ["CLUSTERRA_CONFIG"])
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "clusterra" / "config.json"


def load_config() -> dict:
    path = config_path()
    config = json.loads(path.read_text()) if path.exists() else {}
    for key in ("url", "token", "cluster"):
        if os.environ.get(f"CLUSTERRA_{key.upper()}"):
            config[key] = os.environ[f"CLUSTERRA_{key.upper()}"]
    return config


def save_config(config: dict) -> None:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(config, f, indent=2)


class Api:
    def __init__(self, url: str, token: str):
        if not url or not token:
            raise CliError("Not logged in: run `clusterra login --url URL` first.")
        if not url.startswith(("http://", "https://")):  # never file: or another scheme urllib would open
            raise CliError(f"The portal URL must start with http:// or https://, got {url!r}.")
        self.base = url.rstrip("/") + "/v1"
        self.token = token

    def call(self, method: str, path: str, *, params: dict | None = None, body: dict | None = None):
        url = self.base + path
        if params:
            url += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method, headers={  # noqa: S310 (http(s) only: __init__)
            "Authorization": f"Bearer {self.token}", "Accept": "application/json",
            **({"Content-Type": "application/json"} if data is not None else {}),
        })
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310 (http(s) only: __init__)
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read()).get("detail", exc.reason)
            except (ValueError, AttributeError):
                detail = exc.reason
            if exc.code == 401:
                detail = "The API token was refused (expired or revoked?): run `clusterra login` again."
            raise CliError(f"{detail} (HTTP {exc.code})") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise CliError(f"Cannot reach {self.base}: {getattr(exc, 'reason', exc)}") from None


def pick_cluster(api: Api, wanted: str | None) -> dict:
    clusters = api.call("GET", "/clusters")
    if wanted:
        for cluster in clusters:
            if wanted in (str(cluster["id"]), cluster["slug"], f"{cluster['tenant']}/{cluster['slug']}"):
                return cluster
        raise CliError(f"No cluster {wanted!r}; you can see: {', '.join(c['tenant'] + '/' + c['slug'] for c in clusters) or 'none'}.")
    if len(clusters) == 1:
        return clusters[0]
    raise CliError("Several clusters: choose one with --cluster (or CLUSTERRA_CLUSTER): "
                   + ", ".join(c["tenant"] + "/" + c["slug"] for c in clusters))


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    cells = [[title for _, title in columns]] + [["" if r.get(k) is None else str(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells)


JOB_COLUMNS = [("job_id", "JOBID"), ("name", "NAME"), ("user", "USER"), ("partition", "PARTITION"), ("state", "STATE"),
               ("reason", "REASON"), ("submit_time", "SUBMITTED"), ("node_list", "NODES")]


def emit(args, data, columns=None):
    if args.json:
        print(json.dumps(data, indent=2))
    elif columns is None:
        for key, value in data.items():
            print(f"{key:>14}: {'' if value is None else value}")
    else:
        print(table(data, columns))


# --- commands ---------------------------------------------------------------------------------------
def cmd_login(args):
    token = sys.stdin.readline().strip() if args.token_stdin else getpass.getpass(
        "API token (create one in the portal, or `manage.py create_api_token EMAIL`): ").strip()
    api = Api(args.url, token)
    clusters = api.call("GET", "/clusters")
    config = load_config() if config_path().exists() else {}
    config.update(url=args.url, token=token)
    save_config(config)
    print(f"Logged in to {args.url}; {len(clusters)} cluster(s) visible. Token stored in {config_path()}.")


def cmd_clusters(args, api):
    emit(args, api.call("GET", "/clusters"), [("id", "ID"), ("tenant", "TENANT"), ("slug", "CLUSTER"), ("name", "NAME"),
                                              ("backend", "BACKEND"), ("posix_username", "POSIX USER")])


def cmd_submit(args, api):
    cluster = pick_cluster(api, args.cluster)
    env = {}
    for item in args.env or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--env takes NAME=VALUE, got {item!r}")
        env[name] = value
    script_path = os.path.abspath(os.path.expanduser(args.script_path)) if args.script_path else None
    body = {
        "script_path": script_path, "script": Path(args.script).read_text() if args.script else None,
        "working_directory": os.path.abspath(args.chdir) if args.chdir else None, "name": args.name,
        "partition": args.partition, "time_limit": args.time, "nodes": args.nodes, "ntasks": args.ntasks,
        "cpus_per_task": args.cpus_per_task, "memory": args.mem, "gpus": args.gpus, "array": args.array,
        "dependency": args.dependency, "account": args.account, "qos": args.qos, "environment": env or None,
    }
    job = api.call("POST", f"/clusters/{cluster['id']}/jobs", body={k: v for k, v in body.items() if v is not None})
    if args.json:
        print(json.dumps(job, indent=2))
    else:
        print(f"Submitted job {job['job_id']} to {cluster['slug']} ({job['state'] or 'PENDING'}).")


def cmd_list(args, api):
    cluster = pick_cluster(api, args.cluster)
    params = {"state": args.state, "partition": args.partition, "name": args.name, "user": args.user, "limit": min(args.limit, 500)}
    jobs: list[dict] = []
    while len(jobs) < args.limit:
        page = api.call("GET", f"/clusters/{cluster['id']}/jobs", params=params)
        jobs += page["items"]
        if not page["next_cursor"]:
            break
        params["cursor"] = page["next_cursor"]
    emit(args, jobs[: args.limit], JOB_COLUMNS)


def slurm_duration(seconds) -> str:
    """As Slurm writes durations (`2:00:00`, `2-00:00:00`); the CLI has no Django, so this mirrors clusterra/durations.py."""
    if seconds is None:
        return "UNLIMITED"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def local_time(stamp: str | None) -> str:
    """An API time (ISO 8601, UTC) in this machine's time zone."""
    if not stamp:
        return "-"
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def describe_exit(job: dict) -> str:
    if job["state"] not in FINISHED or job.get("exit_code") is None:
        return "-" if job["state"] not in FINISHED else "not known yet (accounting has not caught up)"
    text = f"{job['exit_code']}"
    if job.get("exit_signal"):
        text += f" (signal {job['exit_signal']})"
    return text


def cmd_show(args, api):
    cluster = pick_cluster(api, args.cluster)
    job = api.call("GET", f"/clusters/{cluster['id']}/jobs/{urllib.parse.quote(args.job_id)}")
    if args.json:
        print(json.dumps(job, indent=2))
        return
    # "Queued" is about the job, not the cache: a finished job stays listed by squeue for a few minutes
    # (the API's in_queue), but it is not queued any more.
    queued = "no, it has finished" if job["state"] in FINISHED else ("yes, running" if job["state"] == "RUNNING" else "yes")
    rows = [
        ("Job", job["job_id"]), ("Name", job["name"]), ("User", job["user"]), ("Partition", job["partition"]),
        ("State", job["state"] + (f" ({job['reason']})" if job["reason"] and job["state"] not in FINISHED else "")),
        ("Exit code", describe_exit(job)), ("Queued", queued),
        ("Submitted", local_time(job["submit_time"])), ("Started", local_time(job["start_time"])),
        ("Ended" if job["state"] in FINISHED else "Expected end", local_time(job["end_time"])),
        ("Time limit", slurm_duration(job["time_limit"])), ("Nodes", job["node_list"] or "-"),
        ("Working dir", job["work_dir"] or "-"), ("Output", job["stdout_path"] or "-"),
    ]
    for label, value in rows:
        print(f"{label:>12}: {value}")


def cmd_cancel(args, api):
    cluster = pick_cluster(api, args.cluster)
    job = api.call("DELETE", f"/clusters/{cluster['id']}/jobs/{urllib.parse.quote(args.job_id)}")
    if args.json:
        print(json.dumps(job, indent=2))
    else:
        print(f"Cancelled job {job['job_id']} ({job['state']}).")


def cmd_output(args, api):
    cluster = pick_cluster(api, args.cluster)
    base = f"/clusters/{cluster['id']}/jobs/{urllib.parse.quote(args.job_id)}"
    if not args.follow:
        result = api.call("GET", f"{base}/output", params={"tail": args.tail})
        print(json.dumps(result, indent=2)) if args.json else sys.stdout.write(result["text"])
        return
    printed, tail = "", args.tail
    while True:
        state = api.call("GET", base)["state"]
        try:
            text = api.call("GET", f"{base}/output", params={"tail": tail})["text"]
        except CliError as exc:
            if "(HTTP 404)" not in str(exc) or state in FINISHED:
                raise
            text = ""  # not started yet: no output file so far
        tail = 10_000
        # Print what is new since the last look (the tail window moves as the file grows).
        anchor = printed[-4096:]
        at = text.rfind(anchor) if anchor else -1
        new = text[at + len(anchor):] if at >= 0 else text
        if new:
            sys.stdout.write(new)
            sys.stdout.flush()
            printed += new
        if state in FINISHED and not new:
            return
        time.sleep(args.interval)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clusterra", description="Clusterra: Slurm jobs from the command line.")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--cluster", default=None, help="cluster id, slug or tenant/slug (default: the only one)")
    sub = parser.add_subparsers(dest="command", required=True)
    login = sub.add_parser("login", help="store the portal URL and an API token")
    login.add_argument("--url", required=True)
    login.add_argument("--token-stdin", action="store_true", help="read the token from standard input")
    sub.add_parser("clusters", help="clusters you can see")
    job = sub.add_parser("job", help="submit, list, show, cancel jobs and read their output").add_subparsers(dest="job_command", required=True)
    submit = job.add_parser("submit", help="submit a batch script")
    what = submit.add_mutually_exclusive_group(required=True)
    what.add_argument("--script-path", help="a script on the cluster (preferred)")
    what.add_argument("--script", help="a local script file to send inline (size-limited)")
    for flag in ("--name", "--partition", "--time", "--mem", "--gpus", "--array", "--dependency", "--account", "--qos", "--chdir"):
        submit.add_argument(flag)
    for flag in ("--nodes", "--ntasks", "--cpus-per-task"):
        submit.add_argument(flag, type=int)
    submit.add_argument("--env", action="append", metavar="NAME=VALUE")
    listing = job.add_parser("list", help="your jobs (tenant admins: --user)")
    for flag in ("--state", "--partition", "--name", "--user"):
        listing.add_argument(flag)
    listing.add_argument("--limit", type=int, default=100)
    for name in ("show", "cancel"):
        job.add_parser(name).add_argument("job_id")
    output = job.add_parser("output", help="the last lines of a job's output")
    output.add_argument("job_id")
    output.add_argument("--tail", type=int, default=100)
    output.add_argument("--follow", "-f", action="store_true", help="keep printing until the job has finished")
    output.add_argument("--interval", type=float, default=2.0, help=argparse.SUPPRESS)
    return parser


COMMANDS = {"clusters": cmd_clusters, "submit": cmd_submit, "list": cmd_list, "show": cmd_show, "cancel": cmd_cancel, "output": cmd_output}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "login":
            cmd_login(args)
            return 0
        config = load_config()
        args.cluster = args.cluster or config.get("cluster")
        api = Api(config.get("url", ""), config.get("token", ""))
        COMMANDS[args.job_command if args.command == "job" else args.command](args, api)
        return 0
    except CliError as exc:
        print(f"clusterra: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
