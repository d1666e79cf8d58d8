#!/usr/bin/env python3
"""Session-log index benchmark: ingestion throughput and search latency, on SQLite and on PostgreSQL.

    .venv/bin/python bench/audit.py [--mb 1024] [--databases sqlite,postgres] [--workers 2] [--queries 50]

1. Generates `--mb` MB of asciicast v2 recordings (seeded: the same bytes every time) into `--data`
   (default /tmp/clusterra-bench-audit/<mb>mb-seed<seed>; reused when already there): sessions of 0.5-6 MB
   with coloured prompts and commands typed key by key (with typos backspaced), coloured `ls`, `make`
   with compiler warnings, training logs with tqdm bars, pip and wget progress redrawn in place, job
   scripts and logs printed, vim editing a job script, less paging a log, top, Slurm tables; output cut
   into events of 1 B to 16 KiB at any byte, key-by-key timing, resizes.
2. For each database: a fresh one (SQLite: a file in a temporary directory; PostgreSQL: `--postgres`, dropped
   and created), migrated, with 2 tenants, 24 people, 4 clusters and one session a recording, started over
   90 days. Ingestion: every recording read from its file, turned into its transcript and written to the
   index (audit.indexing.index_recording), by `--workers` processes; MB/s is recording bytes over wall time.
   Then `--queries` searches (first page, 50 hits) for a rare term and a common term, as a tenant admin
   (whole tenant) and as a member (own sessions), each time another tenant or person: p50/p95 latency.

Targets (issue 11 §8): search p95 < 100 ms at 1 GB, ingestion >= 50 MB/s. Prints PASS/MISS; the exit
status does not depend on them.
"""

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import orjson

BASE = Path(__file__).resolve().parent.parent
RARE, COMMON = "rm -rf /fsx", "loss="
TARGET_MBPS, TARGET_P95_MS = 50.0, 100.0

# --- recordings -------------------------------------------------------------------------------------------

WORDS = ("data model train eval config run job batch node gpu cpu mem time log out err result sample image token "
         "layer weight grad step epoch loader cache shard chunk index query table value key path file dir src lib "
         "build test main util io net api auth user group task queue state error warning info debug").split()
USERS = [f"{name}{n}" for n in range(3) for name in ("alice", "bob", "chen", "dana", "emre", "fatima", "gita", "hugo")]


class Session:
    """One recording being written: events with times, and their bytes."""

    def __init__(self, rng: random.Random, user: str, host: str):
        self.rng, self.user, self.host = rng, user, host
        self.cols, self.rows = rng.choice([(80, 24), (120, 40), (160, 48), (200, 50), (237, 61)])
        self.t = 0.0
        self.cwd = "~"
        self.lines = [orjson.dumps({"version": 2, "width": self.cols, "height": self.rows, "timestamp": 1767225600,
                                    "env": {"TERM": "xterm-256color", "SHELL": "/bin/bash"}, "title": "hpc"})]
        self.size = len(self.lines[0])

    def out(self, text: str, dt: float = 0.0):
        self.t += dt
        line = orjson.dumps([round(self.t, 6), "o", text])
        self.lines.append(line)
        self.size += len(line) + 1

    def bulk(self, text: str, rate: float = 5e6):
        """Output as a PTY delivers it: cut anywhere into reads of up to 16 KiB."""
        rng, at = self.rng, 0
        while at < len(text):
            n = min(len(text) - at, int(rng.choice((64, 512, 4096, 4096, 16384)) * rng.uniform(0.2, 1.0)) + 1)
            self.out(text[at:at + n], n / rate + rng.uniform(0, 0.02))
            at += n

    def resize(self, cols: int, rows: int):
        self.cols, self.rows = cols, rows
        self.t += 0.5
        line = orjson.dumps([round(self.t, 6), "r", f"{cols}x{rows}"])
        self.lines.append(line)
        self.size += len(line) + 1

    def prompt(self):
        user, host = self.user, self.host
        self.out(f"\x1b]0;{user}@{host}: {self.cwd}\x07\x1b[?2004h\x1b[01;32m{user}@{host}\x1b[00m:\x1b[01;34m{self.cwd}"
                 f"\x1b[00m$ ", self.rng.uniform(0.01, 0.2))

    def type(self, command: str):
        rng = self.rng
        self.t += rng.uniform(0.5, 4.0)
        for i, char in enumerate(command):
            if i and rng.random() < 0.03:  # a typo, rubbed out
                self.out(rng.choice("qwertyuiop"), rng.uniform(0.05, 0.25))
                self.out("\b\x1b[K", rng.uniform(0.1, 0.4))
            self.out(char, rng.uniform(0.04, 0.25))
        self.out("\r\n\x1b[?2004l\r", rng.uniform(0.1, 0.5))

    def command(self, command: str):
        self.prompt()
        self.type(command)


def word(rng):
    return rng.choice(WORDS)


def ls(s: Session):
    rng = s.rng
    command = rng.choice(["ls", "ls -la", "ls -lh results/", "ll"])
    s.command(command)
    names = [f"{word(rng)}_{word(rng)}{rng.choice(['.py', '.sh', '.log', '.out', '', '.csv', '.tar.gz', '.h5'])}"
             for _ in range(rng.randint(4, 40))]
    if "l" in command[1:]:
        out = [f"total {rng.randint(8, 9000)}"]
        for name in names:
            colour = "01;34" if "." not in name else ("01;32" if name.endswith(".sh") else "01;31" if name.endswith(".gz") else "0")
            out.append(f"{rng.choice(['drwxr-xr-x', '-rw-r--r--', '-rwxr-xr-x'])} {rng.randint(1, 9)} {s.user} hpc "
                       f"{rng.randint(0, 10**9):>10} Mar {rng.randint(1, 28):2d} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d} "
                       f"\x1b[{colour}m{name}\x1b[0m")
    else:
        out, row = [], []
        for name in names:
            row.append(f"\x1b[0m\x1b[01;{rng.choice(['34', '32', '0', '31'])}m{name}\x1b[0m")
            if len(row) == 4:
                out.append("  ".join(row))
                row = []
        out += ["  ".join(row)] if row else []
    s.bulk("\r\n".join(out) + "\r\n")


def make(s: Session):
    rng = s.rng
    s.command(rng.choice(["make -j8", "make", "cmake --build build -j 16", "make install PREFIX=$HOME/.local"]))
    out = []
    for _ in range(rng.randint(20, 600)):
        src = f"src/{word(rng)}/{word(rng)}_{word(rng)}.c"
        out.append(f"gcc -O2 -g -Wall -Wextra -fopenmp -march=native -I/opt/apps/openmpi/4.1.5/include -Iinclude "
                   f"-DNDEBUG -DUSE_MPI -c {src} -o build/{word(rng)}_{word(rng)}.o")
        if rng.random() < 0.08:
            line = rng.randint(10, 900)
            out.append(f"\x1b[01m\x1b[K{src}:{line}:{rng.randint(1, 40)}:\x1b[m\x1b[K \x1b[01;35m\x1b[Kwarning: \x1b[m\x1b[K"
                       f"unused variable ‘\x1b[01m\x1b[K{word(rng)}\x1b[m\x1b[K’ [\x1b[01;35m\x1b[K-Wunused-variable\x1b[m\x1b[K]")
            out.append(f" {line} |     double \x1b[01;35m\x1b[K{word(rng)}\x1b[m\x1b[K = 0.0;")
            out.append("      |            \x1b[01;35m\x1b[K^~~~~\x1b[m\x1b[K")
    out.append(f"gcc -o bin/{word(rng)} build/*.o -lm -lmpi -fopenmp")
    s.bulk("\r\n".join(out) + "\r\n", rate=2e6)


def train(s: Session):
    rng = s.rng
    s.command(rng.choice(["python train.py --config configs/base.yaml", "srun --pty python train.py --epochs 20",
                          "torchrun --nproc_per_node=4 train.py --lr 3e-4"]))
    step = 0
    for epoch in range(rng.randint(1, 6)):
        total = rng.choice([100, 250, 500, 1000])
        for done in range(0, total + 1, rng.choice([1, 5, 10])):
            bar = "█" * (done * 30 // total)
            s.out(f"\rEpoch {epoch}: {done * 100 // total:3d}%|{bar:<30}| {done}/{total} [00:{done // 60:02d}<00:{(total - done) // 60:02d}, "
                  f"{rng.uniform(5, 15):.2f}it/s]", rng.uniform(0.05, 0.3))
        s.out("\r\n")
        lines = []
        for _ in range(rng.randint(20, 300)):
            step += rng.randint(10, 50)
            lines.append(f"2026-03-01 {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d} | INFO | "
                         f"epoch {epoch} | step {step} | loss={rng.uniform(0.01, 3):.4f} | lr={rng.uniform(1e-5, 1e-3):.2e} | "
                         f"{rng.uniform(100, 2000):.1f} samples/s | gpu_mem={rng.uniform(10, 79):.1f}G")
        s.bulk("\r\n".join(lines) + "\r\n", rate=2e5)
    if rng.random() < 0.2:
        s.bulk("Traceback (most recent call last):\r\n  File \"train.py\", line 214, in <module>\r\n    main()\r\n"
               f"  File \"train.py\", line 188, in main\r\n    loss.backward()\r\ntorch.OutOfMemoryError: CUDA out of memory. "
               f"Tried to allocate {rng.randint(1, 20)}.00 GiB\r\n")


def pip(s: Session):
    rng = s.rng
    s.command(f"pip install {word(rng)}-{word(rng)} torch=={rng.randint(1, 2)}.{rng.randint(0, 9)}")
    for _ in range(rng.randint(1, 6)):
        package, size = f"{word(rng)}_{word(rng)}", rng.uniform(1, 900)
        s.out(f"Collecting {package}\r\n  Downloading {package}-1.{rng.randint(0, 9)}-py3-none-any.whl ({size:.1f} MB)\r\n")
        for k in range(0, 41, rng.choice([1, 2, 4])):
            s.out(f"\r   \x1b[38;2;249;38;114m{'━' * k}\x1b[0m\x1b[38;5;237m{'━' * (40 - k)}\x1b[0m \x1b[32m{size * k / 40:.1f}/{size:.1f} MB"
                  f"\x1b[0m \x1b[31m{rng.uniform(1, 90):.1f} MB/s\x1b[0m eta \x1b[36m0:00:{40 - k:02d}\x1b[0m", rng.uniform(0.05, 0.2))
        s.out("\r\n")
    s.out("Successfully installed " + " ".join(f"{word(rng)}-{rng.randint(0, 9)}.{rng.randint(0, 9)}" for _ in range(5)) + "\r\n")


def wget(s: Session):
    rng = s.rng
    name = f"{word(rng)}_{word(rng)}.tar.gz"
    s.command(f"wget https://data.example.org/{word(rng)}/{name}")
    s.out(f"--2026-03-01 10:00:00--  https://data.example.org/{name}\r\nResolving data.example.org... 203.0.113.9\r\n"
          f"HTTP request sent, awaiting response... 200 OK\r\nLength: {rng.randint(10**6, 10**10)}\r\n\r\n")
    for k in range(0, 101, rng.choice([1, 2])):
        s.out(f"\r{name[:20]:<20} {k:3d}%[{'=' * (k // 5):<20}>] {rng.uniform(1, 900):6.1f}M  {rng.uniform(1, 100):.1f}MB/s", 0.1)
    s.out(f"\r\n\r\n2026-03-01 10:01:00 - ‘{name}’ saved\r\n\r\n")


def slurm(s: Session):
    rng = s.rng
    which = rng.choice(["squeue", "sbatch", "sacct", "sinfo", "cat", "tail", "rm"])
    if which == "squeue":
        s.command(rng.choice(["squeue --me", f"squeue -u {s.user}", "squeue -p gpu"]))
        rows = [f"{rng.randint(10**5, 10**6):>8} {rng.choice(['gpu', 'batch', 'debug']):>9} {word(rng)[:8]:>8} {s.user[:8]:>8} "
                f"{rng.choice(['R', 'PD', 'CG'])} {rng.randint(0, 59)}:{rng.randint(10, 59)} {rng.randint(1, 16):>6} node{rng.randint(1, 64):03d}"
                for _ in range(rng.randint(0, 30))]
        s.bulk("\r\n".join(["   JOBID PARTITION     NAME     USER ST       TIME  NODES NODELIST(REASON)", *rows]) + "\r\n")
    elif which == "sbatch":
        s.command(f"sbatch --mem={rng.choice([4, 16, 64, 256])}G --time={rng.randint(1, 48)}:00:00 --gres=gpu:{rng.randint(1, 8)} run_{word(rng)}.sh")
        s.out(f"Submitted batch job {rng.randint(10**5, 10**6)}\r\n")
    elif which == "sacct":
        s.command("sacct -X --format=JobID,JobName,State,Elapsed,MaxRSS")
        s.bulk("\r\n".join(f"{rng.randint(10**5, 10**6):<12} {word(rng):<10} {rng.choice(['COMPLETED', 'FAILED', 'TIMEOUT']):<10} "
                           f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00 {rng.randint(1, 500)}G" for _ in range(rng.randint(3, 40))) + "\r\n")
    elif which == "sinfo":
        s.command("sinfo")
        s.bulk("PARTITION AVAIL  TIMELIMIT  NODES  STATE NODELIST\r\n" + "\r\n".join(
            f"{p:<9} up   {rng.randint(1, 7)}-00:00:00 {rng.randint(1, 64):>5} {st:>6} node[{rng.randint(1, 9):03d}-{rng.randint(10, 64):03d}]"
            for p in ("gpu", "batch", "debug") for st in ("idle", "mix", "alloc")) + "\r\n")
    elif which == "cat":
        s.command(f"cat run_{word(rng)}.sh")
        s.bulk(f"#!/bin/bash\r\n#SBATCH --job-name={word(rng)}\r\n#SBATCH --mem={rng.choice([4, 64])}G\r\n#SBATCH --time=12:00:00\r\n"
               f"#SBATCH --gres=gpu:{rng.randint(1, 8)}\r\nmodule load cuda/12.2 python/3.11\r\nsource ~/venvs/{word(rng)}/bin/activate\r\n"
               f"srun python train.py --data /fsx/{s.user}/{word(rng)} --out results/{word(rng)}\r\n")
    elif which == "tail":
        s.command(f"tail -f slurm-{rng.randint(10**5, 10**6)}.out")
        for _ in range(rng.randint(5, 80)):
            s.out(f"[{rng.randint(0, 9999):>5}] {word(rng)} {word(rng)}: {rng.uniform(0, 1):.6f} ({word(rng)}={rng.randint(0, 10**4)})\r\n",
                  rng.uniform(0.1, 5))
        s.out("^C\r\n", 1)
    elif rng.random() < 0.02:  # the rare one
        s.command(f"rm -rf /fsx/scratch/{s.user}/{word(rng)}_{rng.randint(0, 999)}")
    else:
        s.command(f"rm {word(rng)}_{rng.randint(0, 99)}.tmp")


def vim(s: Session):
    rng = s.rng
    name = f"run_{word(rng)}.sh"
    s.command(f"vim {name}")
    rows, cols = s.rows, s.cols
    text = ["#!/bin/bash", f"#SBATCH --job-name={word(rng)}", f"#SBATCH --mem={rng.choice([8, 32])}G", "#SBATCH --time=04:00:00",
            "", "module load python/3.11", f"srun python {word(rng)}.py --input /fsx/data/{word(rng)}"]
    screen = "".join(f"\x1b[{i + 1};1H{line}\x1b[K" for i, line in enumerate(text))
    screen += "".join(f"\x1b[{i + 1};1H\x1b[94m~\x1b[0m\x1b[K" for i in range(len(text), rows - 1))
    s.out(f"\x1b[?1049h\x1b[22;0;0t\x1b[>4;2m\x1b[?1h\x1b=\x1b[H\x1b[2J{screen}\x1b[{rows};1H\"{name}\" {len(text)}L, 180B"
          f"\x1b[{rows};{cols - 18}H1,1           All\x1b[1;1H", 0.3)
    for _ in range(rng.randint(1, 4)):  # edits: insert mode, typing, each key redrawn with the ruler
        row = rng.randint(1, len(text))
        s.out(f"\x1b[{rows};1H\x1b[1m-- INSERT --\x1b[0m\x1b[{rows};{cols - 18}H{row},1           All\x1b[{row};1H", 1.0)
        for k, char in enumerate(f" --{word(rng)} {rng.randint(1, 64)}"):
            s.out(f"\x1b[{row};{len(text[row - 1]) + k + 1}H{char}\x1b[{rows};{cols - 18}H{row},{len(text[row - 1]) + k + 2}  ", rng.uniform(0.08, 0.3))
        s.out(f"\x1b[{rows};1H\x1b[K\x1b[{rows};{cols - 18}H{row},1           All", 0.5)
    s.out(f"\x1b[{rows};1H:wq\r\x1b[K\"{name}\" {len(text)}L, 220B written", 1.0)
    s.out("\x1b[?1049l\x1b[23;0;0t\x1b[?1l\x1b>", 0.05)


def less(s: Session):
    rng = s.rng
    s.command(f"less slurm-{rng.randint(10**5, 10**6)}.out")
    rows = s.rows
    s.out("\x1b[?1049h\x1b[?1h\x1b=\r", 0.2)
    for page in range(rng.randint(1, 8)):
        lines = [f"[{page * rows + i:>6}] {word(rng)} {word(rng)} {word(rng)} value={rng.uniform(0, 100):.3f}" for i in range(rows - 1)]
        s.out("\r\n".join(lines) + "\r\n\x1b[7m:\x1b[27m\x1b[K", rng.uniform(0.5, 3))
        s.out("\r\x1b[K", 0.1)
    s.out("\r\x1b[K\x1b[?1l\x1b>\x1b[?1049l", 0.3)


def top(s: Session):
    rng = s.rng
    s.command(rng.choice(["top", "htop"]))
    s.out(f"\x1b[?1049h\x1b[22;0;0t\x1b[1;{s.rows}r\x1b(B\x1b[m\x1b[4l\x1b[?7h\x1b[H\x1b[2J", 0.2)
    for _ in range(rng.randint(2, 12)):
        frame = [f"top - 10:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d} up 12 days,  3 users,  load average: {rng.uniform(0, 64):.2f}",
                 f"Tasks: {rng.randint(200, 900)} total,   {rng.randint(1, 64)} running", "",
                 "    PID USER      PR  NI    VIRT    RES    SHR S  %CPU  %MEM     TIME+ COMMAND"]
        frame += [f"{rng.randint(1000, 99999):>7} {s.user[:8]:<8}  20   0 {rng.randint(1, 99)}.{rng.randint(0, 9)}g  {rng.randint(1, 64)}.{rng.randint(0, 9)}g "
                  f"{rng.randint(100, 999)}m R {rng.uniform(0, 800):5.1f} {rng.uniform(0, 50):5.1f} {rng.randint(0, 999)}:{rng.randint(10, 59)}.00 "
                  f"{rng.choice(['python', 'srun', 'nvidia-smi', 'bash'])}" for _ in range(min(s.rows, 24) - 6)]
        s.out("\x1b[H" + "".join(f"\x1b[{i + 1};1H\x1b[m{line}\x1b[K" for i, line in enumerate(frame)) + "\x1b[J", 3.0)
    s.out(f"\x1b[{s.rows};1H\x1b[?1049l\x1b[23;0;0t\r\x1b[?1l\x1b>", 0.5)


def small(s: Session):
    rng = s.rng
    command = rng.choice(["pwd", "cd project", "git status", "module list", "nvidia-smi -L", "df -h /fsx", "hostname", "history | tail"])
    s.command(command)
    if command == "cd project":
        s.cwd = "~/project"
    s.out(rng.choice([f"/home/{s.user}", "", "On branch main\r\nnothing to commit, working tree clean",
                      "Currently Loaded Modules:\r\n  1) gcc/12.2   2) openmpi/4.1.5   3) cuda/12.2",
                      "GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-1234)", "Filesystem  Size  Used Avail Use% Mounted on\r\nfsx  1.2P  800T  400T  67% /fsx",
                      "login1.hpc.example.org"]) + "\r\n")


ACTIVITIES = [(ls, 12), (make, 6), (train, 6), (pip, 3), (wget, 2), (slurm, 30), (vim, 3), (less, 2), (top, 1), (small, 20)]


def generate(path: Path, seed: int, size: int):
    rng = random.Random(seed)
    user = rng.choice(USERS)
    s = Session(rng, user, f"login{rng.randint(1, 4)}")
    functions, weights = zip(*ACTIVITIES, strict=True)
    while s.size < size:
        rng.choices(functions, weights)[0](s)
        if rng.random() < 0.01:
            s.resize(*rng.choice([(100, 30), (160, 48), (80, 24)]))
    s.prompt()
    s.type("exit")
    s.out("logout\r\n")
    path.write_bytes(b"\n".join(s.lines) + b"\n")
    return path.stat().st_size


def recordings(directory: Path, megabytes: int, seed: int, workers: int) -> list[Path]:
    manifest = directory / "manifest.json"
    if manifest.exists():
        return [directory / name for name in json.loads(manifest.read_text())]
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    plan, total = [], 0
    while total < megabytes * 10**6:
        size = int(rng.uniform(0.5, 6) * 10**6)
        plan.append((directory / f"session-{len(plan):05d}.cast", rng.randrange(2**32), size))
        total += size
    started = time.monotonic()
    with ProcessPoolExecutor(workers) as pool:
        written = sum(pool.map(generate, *zip(*plan, strict=True)))
    manifest.write_text(json.dumps([path.name for path, _, _ in plan]))
    print(f"generated {len(plan)} recordings, {written / 1e6:.0f} MB in {time.monotonic() - started:.0f} s into {directory}")
    return [path for path, _, _ in plan]


# --- one database: the child process ----------------------------------------------------------------------

def _ingest(task):
    from audit.indexing import index_recording
    from terminal.models import TerminalSession

    session_id, path = task
    session = TerminalSession.objects.select_related("cluster").get(pk=session_id)
    with open(path, "rb") as handle:
        result = index_recording(session, handle, log_kind="asciicast")
    return result.bytes, result.lines, result.chunks, result.complete


def _fork_init():
    from django.db import connections

    connections.close_all()


def child(paths: list[Path], workers: int, queries: int) -> dict:
    import django

    django.setup()
    from datetime import UTC, datetime, timedelta

    from django.core.management import call_command
    from django.db import connection, connections

    from accounts.services import ensure_tenant, ensure_user
    from audit.search import SessionFilter, search
    from clusters.models import ClusterAccount
    from clusters.services import ensure_cluster, map_account
    from terminal.models import TerminalSession

    call_command("migrate", verbosity=0)
    rng = random.Random(7)
    tenants = [ensure_tenant(slug=f"t{n}", name=f"Tenant {n}") for n in range(2)]
    clusters = [ensure_cluster(tenant=tenant, slug=f"c{n}", name=f"Cluster {n}") for tenant in tenants for n in range(2)]
    people = [(ensure_user(email=f"{name}@t{n % 2}.test"), n % 2) for n, name in enumerate(USERS)]
    accounts = {}
    for user, t in people:
        for cluster in clusters[2 * t:2 * t + 2]:
            map_account(cluster=cluster, user=user, posix_username=user.email.split("@")[0][:30], uid=20000 + user.pk)
            accounts[user.pk, cluster.pk] = ClusterAccount.objects.get(cluster=cluster, user=user)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    sessions = []
    for path in paths:
        user, t = rng.choice(people)
        cluster = rng.choice(clusters[2 * t:2 * t + 2])
        account = accounts[user.pk, cluster.pk]
        session = TerminalSession.objects.create(user=user, cluster=cluster, account=account, posix_username=account.posix_username,
                                                 backend="local", end_reason=rng.choice(["closed", "closed", "idle", "revoked"]))
        started = start + timedelta(seconds=rng.uniform(0, 90 * 86400))
        TerminalSession.objects.filter(pk=session.pk).update(started_at=started, ended_at=started + timedelta(hours=2))
        sessions.append((session.pk, str(path)))
    connections.close_all()

    started = time.monotonic()
    with ProcessPoolExecutor(workers, initializer=_fork_init) as pool:
        results = list(pool.map(_ingest, sessions, chunksize=1))
    ingest_s = time.monotonic() - started
    total = sum(r[0] for r in results)
    out = {"vendor": connection.vendor, "recordings": len(results), "bytes": total, "ingest_s": ingest_s,
           "mbps": total / 1e6 / ingest_s, "lines": sum(r[1] for r in results), "chunks": sum(r[2] for r in results),
           "incomplete": sum(not r[3] for r in results), "loadavg_after_ingest": os.getloadavg()}
    if connection.vendor == "postgresql":  # what autovacuum does after a bulk load: the GIN pending list merged, statistics
        began = time.monotonic()
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE audit_transcriptchunk")
            cursor.execute("SELECT pg_total_relation_size('audit_transcriptchunk')")
            out["db_mb"] = cursor.fetchone()[0] / 1e6
        out["vacuum_s"] = time.monotonic() - began
    else:
        out["db_mb"] = sum(f.stat().st_size for f in Path(connection.settings_dict["NAME"]).parent.glob("*.sqlite3*")) / 1e6

    people_of = {t: [user for user, tt in people if tt == t] for t in (0, 1)}
    timings = {}
    for term in (RARE, COMMON):
        for scope in ("admin", "member"):
            times, hits = [], []
            for q in range(queries):
                tenant = tenants[q % 2]
                user = rng.choice(people_of[q % 2]) if scope == "member" else None
                filters = SessionFilter(tenant_id=tenant.pk, user_id=user.pk if user else None)
                began = time.perf_counter()
                page = search(term, filters, limit=50)
                times.append((time.perf_counter() - began) * 1000)
                hits.append(len(page.hits))
            times.sort()
            timings[f"{term} / {scope}"] = {"p50": statistics.median(times), "p95": times[int(0.95 * (len(times) - 1))],
                                            "max": times[-1], "mean_hits": statistics.mean(hits)}
    out["search"] = timings
    out["loadavg_end"] = os.getloadavg()
    return out


# --- the orchestrator -------------------------------------------------------------------------------------

def run_database(kind: str, args, paths: list[Path]) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLUSTERRA_")}
    tmp = Path(tempfile.mkdtemp(prefix=f"clusterra-bench-audit-{kind}-"))
    env.update(DJANGO_SETTINGS_MODULE="clusterra.settings", CLUSTERRA_DATA_DIR=str(tmp / "data"),
               CLUSTERRA_SECRET_KEY="bench-audit-" + "k" * 40)
    if kind == "sqlite":
        env["CLUSTERRA_DATABASE_URL"] = f"sqlite:///{tmp / 'data' / 'clusterra.sqlite3'}"
    else:
        url = args.postgres
        name = url.rsplit("/", 1)[1]
        admin = url.rsplit("/", 1)[0] + "/postgres"
        for sql in (f'DROP DATABASE IF EXISTS "{name}"', f'CREATE DATABASE "{name}"'):
            subprocess.run(["psql", admin, "-q", "-c", sql], check=True, capture_output=True)
        env["CLUSTERRA_DATABASE_URL"] = url
    manifest = tmp / "paths.json"
    manifest.write_text(json.dumps([str(p) for p in paths]))
    try:
        done = subprocess.run([sys.executable, __file__, "--child", str(manifest), "--workers", str(args.workers),
                               "--queries", str(args.queries)], cwd=BASE, env=env, capture_output=True, text=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the SQLite file is about as large as the recordings
    if done.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(result: dict):
    vendor = result["vendor"]
    ok = "PASS" if result["mbps"] >= TARGET_MBPS else "MISS"
    print(f"\n{vendor}: {result['recordings']} recordings, {result['bytes'] / 1e6:.0f} MB -> {result['lines']:,} lines in "
          f"{result['chunks']:,} chunks; database {result['db_mb']:.0f} MB"
          + (f"; VACUUM ANALYZE {result['vacuum_s']:.1f} s" if "vacuum_s" in result else ""))
    print(f"  ingestion: {result['mbps']:.1f} MB/s ({result['ingest_s']:.1f} s)  [{ok}: target >= {TARGET_MBPS:.0f} MB/s]"
          f"  load average after: {result['loadavg_after_ingest'][0]:.2f}")
    for name, t in result["search"].items():
        ok = "PASS" if t["p95"] < TARGET_P95_MS else "MISS"
        print(f"  search {name:<20} p50 {t['p50']:7.1f} ms  p95 {t['p95']:7.1f} ms  max {t['max']:7.1f} ms  "
              f"hits/page {t['mean_hits']:.0f}  [{ok}: p95 < {TARGET_P95_MS:.0f} ms]")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=1024, help="megabytes of recordings (10^6 bytes)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", help="where the recordings are (generated if missing)")
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/clusterra_bench_audit")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(BASE))
        paths = [Path(p) for p in json.loads(Path(args.child).read_text())]
        print(json.dumps(child(paths, args.workers, args.queries)))
        return
    print(f"{os.cpu_count()} cores, {args.workers} worker processes; load average {os.getloadavg()[0]:.2f} at the start")
    data = Path(args.data or f"/tmp/clusterra-bench-audit/{args.mb}mb-seed{args.seed}")
    paths = recordings(data, args.mb, args.seed, args.workers)
    for kind in args.databases.split(","):
        report(run_database(kind, args, paths))
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
