"""Parsers against outputs captured from the real Slurm 22.05 of scripts/slurm-local.sh
(job names with spaces, `|`, unicode and invalid UTF-8; (null), N/A, Unknown; arrays)."""

from datetime import UTC, datetime
from pathlib import Path

from jobs import slurm

FIXTURES = Path(__file__).parent / "fixtures" / "slurm"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_squeue():
    jobs = {j.job_id: j for j in slurm.parse_squeue(fixture("squeue.out"))}
    assert set(jobs) == {"1", "2", "3", "4", "5", "6_1", "6_2", "6_3", "7"}
    weird = jobs["3"]
    assert weird.name == "we|ird name, with spaces" and weird.user == "clusterra-t1"
    assert weird.state == "PENDING" and weird.reason == "JobHeldUser" and weird.account == ""
    assert weird.array_job_id is None and weird.array_task_id == ""
    assert weird.start_time is None and weird.submit_time == datetime.fromtimestamp(1795703237, tz=UTC)
    assert weird.time_limit == 30 * 60 and weird.memory_mb == 256 and weird.node_list == ""
    assert weird.work_dir == "/home/clusterra-t1"
    assert jobs["4"].name == "ünïcode ✓" and jobs["4"].time_limit == 86400 and jobs["4"].memory_mb == 1024
    assert jobs["5"].name == "bad\ufffd\ufffdutf8"  # invalid UTF-8 is replaced, not fatal
    task = jobs["6_2"]
    assert task.array_job_id == 6 and task.array_task_id == "2" and task.name == "arr"
    running = jobs["7"]
    assert running.state == "RUNNING" and running.node_list == "localhost" and running.time_used == 1
    assert running.start_time == datetime.fromtimestamp(1795703238, tz=UTC)


def test_squeue_name_with_a_newline_continues_the_record():
    sep = slurm.SEP
    line = sep.join(["9", "9", "N/A", "u", "(null)", "debug", "PENDING", "None", "1", "N/A", "N/A", "5:00", "0:00",
                     "1", "1", "256M", "", "/home/u", "two"])
    jobs = slurm.parse_squeue((line + "\nlines\n").encode())
    assert len(jobs) == 1 and jobs[0].name == "two\nlines"


def test_scontrol_show_job():
    (job,) = slurm.parse_scontrol_show_job(fixture("scontrol_job_running.out"))
    assert job["JobId"] == "7" and job["JobName"] == "running" and job["JobState"] == "RUNNING"
    assert job["StdOut"] == "/home/clusterra-t1/slurm-7.out" and job["WorkDir"] == "/home/clusterra-t1"
    assert job["TRES"] == "cpu=1,mem=256M,node=1,billing=1" and job["AllocNode:Sid"] == "localhost:4190"
    assert job["CPUs/Task"] == "1" and job["ExitCode"] == "0:0"
    (held,) = slurm.parse_scontrol_show_job(fixture("scontrol_job_held.out"))
    assert held["JobName"] == "we|ird name, with spaces"
    tasks = slurm.parse_scontrol_show_job(fixture("scontrol_job_array.out"))
    # A held array is one record for all its tasks until the scheduler splits it.
    assert [(t["ArrayJobId"], t["ArrayTaskId"]) for t in tasks] == [("6", "1-3%2")]


def test_sacct():
    jobs = {j.job_id: j for j in slurm.parse_sacct(fixture("sacct.out"))}
    cancelled = jobs["7"]
    assert cancelled.state == "CANCELLED" and cancelled.exit_code == 0 and cancelled.exit_signal == 0
    assert cancelled.elapsed == 6 and cancelled.end_time == datetime.fromtimestamp(1795703244, tz=UTC)
    pending = jobs["3"]
    assert pending.start_time is None and pending.node_list == "" and pending.name == "we|ird name, with spaces"
    assert jobs["6_[1-3%2]"].job_id_raw == "6"


def test_sacct_takes_the_signal_of_a_cancelled_job_from_its_batch_step():
    """Real output: 63 cancelled while pending, 64 cancelled while running (0:0 on its line, 0:15 on 64.batch)."""
    jobs = slurm.parse_sacct(fixture("sacct_steps.out"))
    assert [(j.job_id, j.state, j.exit_code, j.exit_signal) for j in jobs] == [("63", "CANCELLED", 0, 0), ("64", "CANCELLED", 0, 15)]


def test_sinfo():
    partitions = slurm.parse_sinfo(fixture("sinfo.out"))
    assert [(p.name, p.is_default, p.available) for p in partitions] == [("debug", True, True), ("batch", False, True)]
    assert partitions[0].time_limit == 7200 and partitions[1].time_limit == 2 * 86400
    assert (partitions[0].cpus_idle, partitions[0].cpus_total, partitions[0].nodes_idle) == (8, 8, 1)


def test_sbatch_and_builders():
    assert slurm.parse_sbatch(b"42\n") == "42" and slurm.parse_sbatch(b"42;cluster\n") == "42"
    options = slurm.SubmitOptions(working_directory="/home/u", name="x y", partition="batch", memory="1G", nodes=2)
    argv = slurm.sbatch_argv(options, "/home/u/run.sh")
    assert argv == ["sbatch", "--parsable", "--chdir=/home/u", "--job-name=x y", "--partition=batch", "--nodes=2",
                    "--mem=1G", "--", "/home/u/run.sh"]
    assert slurm.parse_duration("UNLIMITED") is None and slurm.parse_duration("1-12") == 36 * 3600
