import pytest

from jobs.validation import (
    PATTERNS,
    JobRequestError,
    clean_choice,
    clean_count,
    clean_environment,
    clean_inline_script,
    clean_name,
    clean_path,
)

ROOTS = ["/home/alice", "/fsx"]


@pytest.mark.parametrize("raw, expected", [
    ("/home/alice/run.sh", "/home/alice/run.sh"),
    ("/fsx/project/", "/fsx/project"),
    ("/fsx", "/fsx"),
    ("/home/alice/with space/x.sh", "/home/alice/with space/x.sh"),
])
def test_paths_inside_the_roots(raw, expected):
    assert clean_path("script_path", raw, ROOTS) == expected


@pytest.mark.parametrize("raw, message", [
    ("run.sh", "absolute"),
    ("/home/alice/../bob/run.sh", "normalised"),
    ("/home/alice/./run.sh", "normalised"),
    ("//etc/passwd", "normalised"),
    ("/etc/passwd", "inside /home/alice or /fsx"),
    ("/home/alicex/run.sh", "inside"),
    ("/fsx2/x", "inside"),
    ("/home/alice/a\x00b", "not a valid path"),
    ("", "required"),
])
def test_bad_paths(raw, message):
    with pytest.raises(JobRequestError, match=message):
        clean_path("script_path", raw, ROOTS)


@pytest.mark.parametrize("field, good, bad", [
    ("partition", "debug", "debug; rm -rf /"),
    ("time_limit", "1-00:00:00", "forever"),
    ("time_limit", "30", "30m"),
    ("memory", "4G", "4 GB"),
    ("gpus", "a100:2", "--all"),
    ("array", "0-9%2", "0-9;1"),
    ("dependency", "afterok:123:124_1", "afterok"),
    ("account", "physics", "-A"),
])
def test_slurm_options(field, good, bad):
    pattern, example = PATTERNS[field]
    assert clean_choice(field, good, pattern, example) == good
    with pytest.raises(JobRequestError, match=field):
        clean_choice(field, bad, pattern, example)


def test_counts_names_environment_and_scripts():
    assert clean_count("nodes", 2, 100) == 2
    for bad in (0, -1, 101, "2", True, 1.5):
        with pytest.raises(JobRequestError):
            clean_count("nodes", bad, 100)
    assert clean_name("we|ird name ünïcode") == "we|ird name ünïcode"
    with pytest.raises(JobRequestError):
        clean_name("bad\nname")
    assert clean_environment({"OMP_NUM_THREADS": "4"}) == {"OMP_NUM_THREADS": "4"}
    for bad in ({"SBATCH_PARTITION": "x"}, {"HOME": "/root"}, {"1X": "y"}, {"X": 3}):
        with pytest.raises(JobRequestError, match="environment"):
            clean_environment(bad)
    assert clean_inline_script("#!/bin/bash\necho hi\n") == b"#!/bin/bash\necho hi\n"
    with pytest.raises(JobRequestError, match="interpreter"):
        clean_inline_script("echo hi")
    with pytest.raises(JobRequestError, match="limited"):
        clean_inline_script("#!/bin/sh\n" + "x" * 300_000)
