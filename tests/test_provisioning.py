"""Provisioning POSIX accounts and Slurm associations on the head node (clusters/provisioning.py).

Real useradd / usermod / sacctmgr / scancel on this machine: those tests need root (CI runs the suite
as root) and the local Slurm of scripts/slurm-local.sh. Each test makes throwaway users `ct<hex>`
with uids from 61000–61999 and removes them (userdel -r, sacctmgr delete user) afterwards.

The SSM path runs against a peer of SendCommand built into botocore's event hooks (tests/ssm_emulator.py
and tests/aws_control_plane.py cover Session Manager, not Run Command): it reads the request as
serialised for the wire, checks it as SSM would, and runs the script as the SSM agent runs
AWS-RunShellScript (a file executed by `sh`, as root), so the very helper text that goes to AWS runs
here for real.
"""

import json
import os
import pwd
import random
import secrets
import shutil
import stat
import subprocess
import threading
import time
import uuid
from pathlib import Path

import botocore.session
import pytest
from botocore.awsrequest import AWSResponse
from botocore.validate import ParamValidator

from clusters import aws, provisioning
from clusters.executors import ExecutorError, LocalExecutor
from clusters.models import Cluster, ClusterAccount
from clusters.posix import AccountLocked, PosixAccountError, check_posix_account
from clusters.provisioning import (
    HELPER,
    ProvisioningError,
    create_posix_account,
    head_node_account,
    head_node_uid_owner,
    lock_posix_account,
    ssm_provision_script,
    unlock_posix_account,
)

AS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not AS_ROOT, reason="creates real POSIX users with useradd: needs root (CI runs as root)")
REGION, INSTANCE, ROLE = "us-east-1", "i-0123456789abcdef0", "arn:aws:iam::123456789012:role/clusterra-hpc"
CLEAN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def local_cluster() -> Cluster:
    # Never saved: provisioning reads only backend, slug and home_template.
    return Cluster(pk=4242, slug="hpc", name="HPC", backend=Cluster.Backend.LOCAL, home_template="/home/{username}")


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)
    return value


def sh(*argv, timeout=60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=CLEAN_ENV, **kw)


# --- throwaway users ------------------------------------------------------------------------------
def _free_uid(taken: set[int]) -> int:
    import grp

    for uid in random.sample(range(61000, 62000), 1000):
        if uid in taken:
            continue
        try:
            pwd.getpwuid(uid)
            continue
        except KeyError:
            pass
        try:
            grp.getgrgid(uid)
            continue
        except KeyError:
            return uid
    raise AssertionError("no free uid in 61000–61999")


def remove_user(name: str, uid: int) -> None:
    """Whatever a test left: jobs, processes, the Slurm user, the POSIX user, its group and home."""
    if shutil.which("scancel"):
        sh("scancel", f"--user={uid}")
    sh("pkill", "-KILL", "-U", str(uid))
    wait_for(lambda: sh("pgrep", "-U", str(uid)).returncode == 1, 15, f"processes of uid {uid} gone")
    if shutil.which("sacctmgr"):
        sh("sacctmgr", "-i", "delete", "user", name)
    sh("userdel", "-r", name)
    group = sh("getent", "group", name).stdout.split(":")
    if len(group) > 2 and group[2] == str(uid):
        sh("groupdel", name)
    home = Path("/home") / name
    if home.is_dir() and not home.is_symlink():
        shutil.rmtree(home)


@pytest.fixture
def throwaway():
    """new() -> (name, uid): a name and uid free on this machine, cleaned up after the test."""
    made: list[tuple[str, int]] = []

    def new() -> tuple[str, int]:
        name = "ct" + secrets.token_hex(5)
        made.append((name, _free_uid({uid for _, uid in made})))
        return made[-1]

    yield new
    for name, uid in made:
        remove_user(name, uid)


@pytest.fixture(scope="session")
def slurm_account(live_slurm):
    name = "ct" + secrets.token_hex(5)
    yield name
    sh("sacctmgr", "-i", "delete", "account", name)  # after every test's users are deleted


def passwd(name: str):
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def association(user: str, account: str) -> bool:
    out = sh("sacctmgr", "-nP", "show", "assoc", f"user={user}", f"account={account}", "format=user")
    assert out.returncode == 0, out.stderr
    return user in out.stdout.split()


def sbatch(name: str, *options: str) -> str:
    home = passwd(name).pw_dir
    out = sh("runuser", "-u", name, "--", "sbatch", "--parsable", f"--chdir={home}", *options, cwd=home)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def job_state(job_id: str) -> str:
    return sh("squeue", "-h", "-j", job_id, "-t", "all", "-o", "%T").stdout.strip()


def account_for(name: str, uid: int) -> ClusterAccount:
    return ClusterAccount(cluster=local_cluster(), posix_username=name, uid=uid, state=ClusterAccount.State.ACTIVE)


# --- refused before anything runs -----------------------------------------------------------------
BAD_IDENTITIES = [
    ("root", 61000, "never manages root"),
    ("ctok", 0, "below 1000"),
    ("ctok", 500, "below 1000"),
    ("ctok", 999, "below 1000"),
    ("ctok", 65534, "reserved"),
    ("Bad", 61000, "not a valid POSIX user name"),
    ("-rf", 61000, "not a valid POSIX user name"),
    ("a b", 61000, "not a valid POSIX user name"),
    ("x" * 33, 61000, "not a valid POSIX user name"),
    ("../etc", 61000, "not a valid POSIX user name"),
]


@pytest.fixture
def nothing_runs(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the helper must not run")

    monkeypatch.setattr(provisioning, "_run_local", boom)
    monkeypatch.setattr(provisioning, "_run_ssm", boom)


@pytest.mark.parametrize(("name", "uid", "why"), BAD_IDENTITIES)
def test_root_system_accounts_and_bad_names_are_refused_up_front(nothing_runs, name, uid, why):
    calls = [
        lambda: create_posix_account(local_cluster(), username=name, uid=uid, slurm_account=None),
        lambda: lock_posix_account(local_cluster(), username=name, uid=uid, kill_processes=True, cancel_jobs=True),
        lambda: unlock_posix_account(local_cluster(), username=name, uid=uid, slurm_account=None),
    ]
    for call in calls:
        with pytest.raises(ProvisioningError, match=why) as caught:
            call()
        assert caught.value.retryable is False


@pytest.mark.parametrize(("template", "slurm", "shell", "why"), [
    ("/{username}", None, "/bin/bash", "below a directory"),
    ("/home/{username} x", None, "/bin/bash", "letters, digits"),
    ("/home/../etc/{username}", None, "/bin/bash", "below a directory"),
    ("/home/{username}", "Bad Account", "/bin/bash", "not a valid Slurm account"),
    ("/home/{username}", "x;rm", "/bin/bash", "not a valid Slurm account"),
    ("/home/{username}", None, "bash", "not an absolute path"),
    ("/home/{username}", None, "/bin/../bin/sh", "not an absolute path"),
])
def test_bad_home_slurm_account_or_shell_is_refused_up_front(nothing_runs, template, slurm, shell, why):
    cluster = local_cluster()
    cluster.home_template = template
    with pytest.raises(ProvisioningError, match=why):
        create_posix_account(cluster, username="ctok", uid=61000, slurm_account=slurm, shell=shell)


def test_head_node_account_checks_the_name(nothing_runs):
    with pytest.raises(ProvisioningError, match="not a valid POSIX user name"):
        head_node_account(local_cluster(), "a;b")


def test_head_node_lookups_local():
    assert head_node_account(local_cluster(), "root") == (0, "/root")  # so onboarding can refuse it
    assert head_node_account(local_cluster(), "ct" + secrets.token_hex(6)) is None
    assert head_node_uid_owner(local_cluster(), 0) == "root"


# --- the helper on its own ------------------------------------------------------------------------
def test_helper_is_an_executable_posix_sh_script():
    mode = HELPER.stat().st_mode
    assert mode & stat.S_IXUSR and not mode & (stat.S_IWGRP | stat.S_IWOTH)
    assert HELPER.read_text().startswith("#!/bin/sh\n")
    for shell in ("dash", "bash"):
        if shutil.which(shell):
            out = sh(shell, "-n", str(HELPER))
            assert out.returncode == 0, out.stderr
    assert "{{" not in HELPER.read_text()


def run_helper(*args: str) -> subprocess.CompletedProcess:
    return sh(str(HELPER), *args)


@needs_root
@pytest.mark.parametrize(("args", "code", "why"), [
    (["create", "--user", "root", "--uid", "61000", "--home", "/home/root", "--shell", "/bin/bash"], 11, "never manages root"),
    (["create", "--user", "ctok", "--uid", "0", "--home", "/home/ctok", "--shell", "/bin/bash"], 11, "below 1000"),
    (["create", "--user", "ctok", "--uid", "500", "--home", "/home/ctok", "--shell", "/bin/bash"], 11, "below 1000"),
    (["create", "--user", "ctok", "--uid", "61000", "--home", "/home/ctok", "--shell", "/bin/bash", "--min-uid", "62000"], 11, "below 62000"),
    (["create", "--user", "Bad", "--uid", "61000", "--home", "/home/Bad", "--shell", "/bin/bash"], 10, "not a valid POSIX user name"),
    (["create", "--user", "ctok", "--uid", "061000", "--home", "/home/ctok", "--shell", "/bin/bash"], 10, "is not a uid"),
    (["create", "--user", "ctok", "--uid", "-1", "--home", "/home/ctok", "--shell", "/bin/bash"], 10, "is not a uid"),
    (["create", "--user", "ctok", "--uid", "61000", "--home", "/etc", "--shell", "/bin/bash"], 10, "not a valid home"),
    (["create", "--user", "etc", "--uid", "61000", "--home", "/etc", "--shell", "/bin/bash"], 10, "not a valid home"),
    (["create", "--user", "ctok", "--uid", "61000", "--home", "/home/x/../ctok", "--shell", "/bin/bash"], 10, "not a valid home"),
    (["create", "--user", "ctok", "--uid", "61000", "--home", "/tmp/ctok", "--shell", "/bin/bash"], 11, "writable by other users"),
    (["create", "--user", "ctok", "--uid", "61000", "--home", "/home/ctok", "--shell", "/tmp/sh"], 10, "not a login shell"),
    (["create", "--user", "ctok", "--uid", "61000", "--home", "/home/ctok"], 10, "needs --shell"),
    (["create", "--user", "ctok", "--uid", "61000", "--home", "/home/ctok", "--shell", "/bin/bash", "--kill-processes"], 10, "takes no"),
    (["lock", "--user", "ctok", "--uid", "61000", "--home", "/home/ctok"], 10, "takes no --home"),
    (["lock", "--user", "daemon", "--uid", "1", "--kill-processes"], 11, "below 1000"),
    (["lookup", "--user", "ctok", "--uid", "61000"], 10, "--user NAME or --uid N"),
    (["frob", "--user", "ctok"], 10, "Unknown action"),
    (["lock", "--user", "ctok", "--uid", "61000", "--evil", "$(id)"], 10, r"Unknown argument --evil"),
])
def test_the_helper_checks_its_arguments_itself(args, code, why):
    out = run_helper(*args)
    assert out.returncode == code, (out.stdout, out.stderr)
    assert why in out.stderr and out.stdout == ""


@pytest.fixture
def homes_base():
    """A root-owned 0755 directory for homes (pytest's tmp_path is below /tmp, which others may write)."""
    base = Path("/home") / ("ctbase" + secrets.token_hex(4))
    base.mkdir(mode=0o755)
    yield base
    shutil.rmtree(base)


@needs_root
def test_the_helper_refuses_unsafe_or_foreign_homes(homes_base, throwaway):
    name, uid = throwaway()
    home = homes_base / name
    args = ["create", "--user", name, "--uid", str(uid), "--home", str(home), "--shell", "/bin/bash"]
    home.symlink_to("/etc")
    out = run_helper(*args)
    assert out.returncode == 11 and "is a symbolic link" in out.stderr, out.stderr
    home.unlink()
    home.mkdir()
    os.chown(home, 12345, 12345)  # somebody else's directory
    out = run_helper(*args)
    assert out.returncode == 11 and "belongs to uid 12345, not" in out.stderr, out.stderr
    assert passwd(name) is None  # nothing half made
    homes_base.chmod(0o775)
    out = run_helper(*args)
    assert out.returncode == 11 and "writable by other users (mode 775)" in out.stderr, out.stderr
    homes_base.chmod(0o755)
    os.chown(homes_base, 12345, 0)
    out = run_helper(*args)
    assert out.returncode == 11 and "belongs to uid 12345, not root" in out.stderr, out.stderr
    os.chown(homes_base, 0, 0)
    # Through a link whose target sits in a directory somebody else may write to.
    (homes_base / "shared").mkdir(mode=0o777)
    (homes_base / "shared").chmod(0o777)  # noqa: S103 (the unsafe case under test)
    (homes_base / "shared" / "users").mkdir(mode=0o755)
    (homes_base / "users").symlink_to(homes_base / "shared" / "users")
    out = run_helper(*["create", "--user", name, "--uid", str(uid), "--home", str(homes_base / "users" / name), "--shell", "/bin/bash"])
    assert out.returncode == 11 and f"{homes_base}/shared (above" in out.stderr and "mode 777" in out.stderr, out.stderr
    out = run_helper(*["create", "--user", name, "--uid", str(uid), "--home", str(homes_base / "missing" / name),
                       "--shell", "/bin/bash"])
    assert out.returncode == 11 and "does not exist on the head node (is its file system mounted?)" in out.stderr
    assert passwd(name) is None


@needs_root
def test_lookup_through_the_helper():
    assert run_helper("lookup", "--user", "root").stdout == "account: 0 /root\n"
    assert run_helper("lookup", "--uid", "0").stdout == "owner: root\n"
    assert run_helper("lookup", "--user", "ct" + secrets.token_hex(6)).stdout == "account: none\n"


# --- create ---------------------------------------------------------------------------------------
@needs_root
@pytest.mark.slow
@pytest.mark.slurm
def test_create_makes_a_working_account_and_is_idempotent(throwaway, slurm_account):
    name, uid = throwaway()
    result = create_posix_account(local_cluster(), username=name, uid=uid, slurm_account=slurm_account)
    home = f"/home/{name}"
    assert result.steps[0] == f"created POSIX user {name} (uid {uid}, group {name} gid {uid}, home {home} 0700, shell /bin/bash)"
    assert result.steps[1:] in (
        [f"created Slurm account {slurm_account}", f"added Slurm association {name} → account {slurm_account}"],
        [f"Slurm account {slurm_account} already present", f"added Slurm association {name} → account {slurm_account}"],
    )
    entry = passwd(name)
    assert (entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_shell) == (uid, uid, home, "/bin/bash")
    st = os.stat(home)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (uid, 0o700)
    assert Path(home, ".profile").stat().st_uid == uid  # from /etc/skel, the user's
    assert association(name, slurm_account)
    assert check_posix_account(name, uid).pw_uid == uid

    job_id = sbatch(name, "--wrap", "true")
    assert job_id.isdigit()
    assert LocalExecutor().run(account_for(name, uid), ["id", "-u"]).stdout == f"{uid}\n".encode()

    again = create_posix_account(local_cluster(), username=name, uid=uid, slurm_account=slurm_account)
    assert again.steps == [
        f"POSIX user {name} already present (uid {uid}, shell /bin/bash)",
        f"home {home} already present (owner {name}, mode 0700)",
        f"Slurm account {slurm_account} already present",
        f"Slurm association {name} → account {slurm_account} already present",
    ]


@needs_root
def test_name_or_uid_taken_is_refused_and_nothing_is_half_made(throwaway):
    name, uid = throwaway()
    other, other_uid = throwaway()
    create_posix_account(local_cluster(), username=name, uid=uid, slurm_account=None)
    assert head_node_account(local_cluster(), name) == (uid, f"/home/{name}")
    assert head_node_uid_owner(local_cluster(), uid) == name

    with pytest.raises(ProvisioningError, match=f"The name {name} is taken on the head node by uid {uid}, not {other_uid}") as caught:
        create_posix_account(local_cluster(), username=name, uid=other_uid, slurm_account=None)
    assert caught.value.retryable is False
    with pytest.raises(ProvisioningError, match=f"uid {uid} is taken on the head node by {name}") as caught:
        create_posix_account(local_cluster(), username=other, uid=uid, slurm_account=None)
    assert caught.value.retryable is False
    assert passwd(other) is None and sh("getent", "group", other).returncode == 2 and not Path(f"/home/{other}").exists()
    # A system account's name, with a regular uid: taken.
    with pytest.raises(ProvisioningError, match="The name daemon is taken on the head node by uid 1"):
        create_posix_account(local_cluster(), username="daemon", uid=other_uid, slurm_account=None)
    # Locking or unlocking somebody else's uid is refused too.
    with pytest.raises(ProvisioningError, match=f"has uid {uid} on the head node, not {other_uid}"):
        lock_posix_account(local_cluster(), username=name, uid=other_uid, kill_processes=True, cancel_jobs=False)
    assert check_posix_account(name, uid)  # still usable


@needs_root
def test_an_existing_account_is_adopted_and_a_half_done_one_finished(throwaway):
    name, uid = throwaway()
    # As if an earlier run (or an administrator) had got as far as useradd, with a 0755 home.
    out = sh("useradd", "--uid", str(uid), "--user-group", "--home-dir", f"/home/{name}", "--create-home", "--shell", "/bin/sh", name)
    assert out.returncode == 0, out.stderr
    os.chmod(f"/home/{name}", 0o755)  # noqa: S103 (the state a 022 umask leaves, which create must fix)
    result = create_posix_account(local_cluster(), username=name, uid=uid, slurm_account=None)
    assert result.steps == [f"POSIX user {name} already present (uid {uid}, shell /bin/sh)",
                            f"set home /home/{name} to owner {name}, mode 0700 (was uid {uid}, mode 755)"]
    assert stat.S_IMODE(os.stat(f"/home/{name}").st_mode) == 0o700

    # The home is gone (deleted by hand): made again, from /etc/skel, the user's.
    shutil.rmtree(f"/home/{name}")
    result = create_posix_account(local_cluster(), username=name, uid=uid, slurm_account=None)
    assert result.steps[1] == f"created home /home/{name} (owner {name}, mode 0700)"
    st = os.stat(f"/home/{name}")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (uid, 0o700)

    # The same name with another home than the cluster's: refused, not silently adopted.
    cluster = local_cluster()
    cluster.home_template = "/srv/{username}"
    with pytest.raises(ProvisioningError, match=f"exists on the head node with home /home/{name}.*is /srv/{name}"):
        create_posix_account(cluster, username=name, uid=uid, slurm_account=None)


# --- lock and unlock --------------------------------------------------------------------------------
@needs_root
@pytest.mark.slow
@pytest.mark.slurm
def test_lock_ends_processes_and_jobs_and_unlock_restores_the_same_account(throwaway, slurm_account):
    name, uid = throwaway()
    cluster = local_cluster()
    create_posix_account(cluster, username=name, uid=uid, slurm_account=slurm_account)
    held = sbatch(name, "--hold", "--wrap", "sleep 600")
    assert job_state(held) == "PENDING"
    sleeper = subprocess.Popen(["sleep", "600"], user=uid, group=uid, extra_groups=[], cwd="/", start_new_session=True)
    try:
        result = lock_posix_account(cluster, username=name, uid=uid, kill_processes=True, cancel_jobs=True)
        assert result.steps == [
            f"locked POSIX user {name} (password locked, account expired)",
            f"cancelled 1 Slurm job(s) of {name}",
            f"killed 1 process(es) of {name} (uid {uid})",
        ]
        assert sleeper.wait(timeout=10) == -9
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait(5)
    assert job_state(held) == "CANCELLED"
    with pytest.raises(AccountLocked, match="locked on the head node"):
        check_posix_account(name, uid)
    with pytest.raises(ExecutorError, match="locked on the head node"):
        LocalExecutor().run(account_for(name, uid), ["true"])

    again = lock_posix_account(cluster, username=name, uid=uid, kill_processes=True, cancel_jobs=True)
    assert again.steps == [f"POSIX user {name} already locked", f"no Slurm jobs of {name} to cancel",
                           f"no processes of {name} (uid {uid}) were running"]

    result = unlock_posix_account(cluster, username=name, uid=uid, slurm_account=slurm_account)
    assert result.steps == [
        f"unlocked POSIX user {name} (uid {uid}, home /home/{name})",
        f"home /home/{name} already present (owner {name}, mode 0700)",
        f"Slurm account {slurm_account} already present",
        f"Slurm association {name} → account {slurm_account} already present",
    ]
    entry = check_posix_account(name, uid)
    assert (entry.pw_uid, entry.pw_dir) == (uid, f"/home/{name}")
    assert LocalExecutor().run(account_for(name, uid), ["id", "-u"]).stdout == f"{uid}\n".encode()
    assert sbatch(name, "--wrap", "true").isdigit()
    assert unlock_posix_account(cluster, username=name, uid=uid, slurm_account=None).steps[0] == f"POSIX user {name} was not locked"


@needs_root
def test_lock_without_killing_leaves_processes_alone(throwaway):
    name, uid = throwaway()
    create_posix_account(local_cluster(), username=name, uid=uid, slurm_account=None)
    sleeper = subprocess.Popen(["sleep", "600"], user=uid, group=uid, extra_groups=[], cwd="/", start_new_session=True)
    try:
        result = lock_posix_account(local_cluster(), username=name, uid=uid, kill_processes=False, cancel_jobs=False)
        assert result.steps == [f"locked POSIX user {name} (password locked, account expired)"]
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait(5)


@needs_root
def test_lock_of_a_missing_account_is_done_and_unlock_says_create(throwaway):
    name, uid = throwaway()
    result = lock_posix_account(local_cluster(), username=name, uid=uid, kill_processes=True, cancel_jobs=True)
    assert result.steps == [f"no POSIX user {name} on the head node: nothing to lock",
                            f"no POSIX user {name}: no Slurm jobs to cancel",
                            f"no processes of {name} (uid {uid}) were running"]
    with pytest.raises(ProvisioningError, match="no POSIX user .* to unlock: create it instead") as caught:
        unlock_posix_account(local_cluster(), username=name, uid=uid, slurm_account=None)
    assert caught.value.retryable is False


def test_expired_shadow_entries_are_refused(monkeypatch, tmp_path, posix_user):
    from clusters import posix

    today = int(time.time() // 86400)
    shadow = tmp_path / "shadow"
    monkeypatch.setattr(posix, "SHADOW", str(shadow))
    name, uid = posix_user.pw_name, posix_user.pw_uid
    for expire, refused in [("", False), ("0", False), (str(today + 30), False), ("1", True), (str(today), True)]:
        shadow.write_text(f"someone:!:19000:0:99999:7::1:\n{name}:!:19000:0:99999:7::{expire}:\n")
        if refused:
            with pytest.raises(AccountLocked):
                check_posix_account(name, uid)
        else:
            assert check_posix_account(name, uid).pw_uid == uid
    shadow.unlink()  # unreadable (not root): no opinion
    assert check_posix_account(name, uid).pw_uid == uid
    assert issubclass(AccountLocked, PosixAccountError)


# --- privilege: root runs the helper, a service user goes through sudo -------------------------------
def test_helper_argv_is_direct_as_root_and_sudo_otherwise(monkeypatch, tmp_path):
    monkeypatch.setattr(provisioning.os, "geteuid", lambda: 0)
    assert provisioning.helper_argv(["lookup", "--uid", "1"]) == [str(HELPER), "lookup", "--uid", "1"]
    monkeypatch.setattr(provisioning.os, "geteuid", lambda: 999)
    shim = _sudo_shim(tmp_path, "exit 0\n")
    monkeypatch.setattr(provisioning, "_SPAWN_PATH", f"{shim}:{provisioning._SPAWN_PATH}")
    assert provisioning.helper_argv(["lookup", "--uid", "1"]) == [f"{shim}/sudo", "-n", "--", str(HELPER), "lookup", "--uid", "1"]
    assert HELPER.is_absolute() and HELPER.name == "provision_helper.sh"
    (shim / "sudo").unlink()
    monkeypatch.setattr(provisioning, "_SPAWN_PATH", str(shim))
    with pytest.raises(ProvisioningError, match="sudo is not installed"):
        provisioning.helper_argv(["lookup", "--uid", "1"])


def _sudo_shim(tmp_path, body: str) -> Path:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sudo").write_text("#!/bin/sh\n" + body)
    (shim / "sudo").chmod(0o755)
    return shim


@needs_root
def test_a_service_user_runs_the_helper_through_sudo(monkeypatch, tmp_path, throwaway):
    """Through a stand-in for sudo (sudo is not a test dependency): the exact argv, and a refusal's message."""
    name, uid = throwaway()
    log = tmp_path / "sudo.log"
    shim = _sudo_shim(tmp_path, f'printf "%s\\n" "$@" > {log}\n[ "$1" = -n ] && [ "$2" = -- ] || exit 99\nshift 2\nexec "$@"\n')
    monkeypatch.setattr(provisioning.os, "geteuid", lambda: 999)
    monkeypatch.setattr(provisioning, "_SPAWN_PATH", f"{shim}:{provisioning._SPAWN_PATH}")
    result = lock_posix_account(local_cluster(), username=name, uid=uid, kill_processes=False, cancel_jobs=False)
    assert result.steps == [f"no POSIX user {name} on the head node: nothing to lock"]
    assert log.read_text().splitlines() == ["-n", "--", str(HELPER), "lock", "--user", name, "--uid", str(uid), "--min-uid", "1000"]

    (shim / "sudo").write_text("#!/bin/sh\necho 'sudo: a password is required' >&2\nexit 1\n")
    with pytest.raises(ProvisioningError, match=r"sudo refused to run the provisioning helper.*docs/deployment.md") as caught:
        lock_posix_account(local_cluster(), username=name, uid=uid, kill_processes=False, cancel_jobs=False)
    assert caught.value.retryable is False


def test_helper_timeout_is_retryable(monkeypatch, tmp_path):
    shim = _sudo_shim(tmp_path, "exec sleep 30\n")
    monkeypatch.setattr(provisioning.os, "geteuid", lambda: 999)
    monkeypatch.setattr(provisioning, "_SPAWN_PATH", f"{shim}:{provisioning._SPAWN_PATH}")
    monkeypatch.setattr(provisioning, "TIMEOUT", 0.5)
    with pytest.raises(ProvisioningError, match="did not finish within 0.5 seconds") as caught:
        lock_posix_account(local_cluster(), username="ctok", uid=61000, kill_processes=False, cancel_jobs=False)
    assert caught.value.retryable is True


# --- SSM --------------------------------------------------------------------------------------------
class RunCommandPeer:
    """SendCommand / GetCommandInvocation / CancelCommand for one instance, answered in botocore's
    before-call hook from the request as serialised for the wire; scripts run as the agent runs
    AWS-RunShellScript: written to a file, executed with `sh`, as this (root) process, with
    executionTimeout. Knobs: `deliver` (False: Undeliverable), `send_error` (an AWS error code)."""

    def __init__(self, client, instance_id: str, workdir: Path):
        self.instance_id, self.workdir = instance_id, workdir
        self.commands: dict[str, dict] = {}
        self.requests: list[tuple[str, dict]] = []
        self.deliver, self.send_error = True, None
        self.model = client.meta.service_model
        client.meta.events.register("before-call.ssm.*", self._call)

    def _answer(self, operation: str, body: dict, status: int = 200):
        if status == 200:  # the answer must fit the operation's output shape, as with Stubber
            report = ParamValidator().validate(body, self.model.operation_model(operation).output_shape)
            assert not report.has_errors(), report.generate_report()
        return AWSResponse(f"https://ssm.{REGION}.amazonaws.com/", status, {}, None), body

    def _error(self, code: str, message: str, status: int = 400):
        return self._answer("", {"Error": {"Code": code, "Message": message}}, status)

    def _call(self, model, params, **kwargs):
        body = json.loads(params["body"] or b"{}")
        self.requests.append((model.name, body))
        return getattr(self, f"_{model.name}")(body)

    def _SendCommand(self, body):  # noqa: N802
        if self.send_error:
            return self._error(self.send_error, "refused by the test")
        if body.get("InstanceIds") != [self.instance_id]:
            return self._error("InvalidInstanceId", "unknown instance")
        if body.get("DocumentName") != "AWS-RunShellScript":
            return self._error("InvalidDocument", "unknown document")
        parameters = body["Parameters"]
        assert set(parameters) == {"commands", "executionTimeout"} and len(parameters["commands"]) == 1
        assert "{{" not in json.dumps(parameters)  # SSM would resolve it as a parameter reference
        assert 1 <= int(parameters["executionTimeout"][0]) <= 172800 and len(body.get("Comment", "")) <= 100
        command_id = str(uuid.uuid4())
        command = {"status": "Pending", "code": -1, "stdout": "", "stderr": "", "proc": None}
        self.commands[command_id] = command
        if self.deliver:
            script = self.workdir / f"{command_id}.sh"
            script.write_text(parameters["commands"][0])
            script.chmod(0o700)
            command["status"] = "InProgress"
            command["proc"] = subprocess.Popen(["sh", "-c", str(script)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE, cwd="/", env={"PATH": "/usr/bin:/bin"},
                                               start_new_session=True)
            threading.Thread(target=self._finish, args=(command, int(parameters["executionTimeout"][0])), daemon=True).start()
        else:
            command.update(status="Failed", details="Undeliverable")
        return self._answer("SendCommand", {"Command": {"CommandId": command_id, "DocumentName": "AWS-RunShellScript",
                                                        "InstanceIds": [self.instance_id], "Comment": body.get("Comment", "")}})

    def _finish(self, command, execution_timeout):
        proc = command["proc"]
        try:
            out, err = proc.communicate(timeout=execution_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            out, err = proc.communicate()
            command.update(status="TimedOut", details="ExecutionTimedOut", code=-1)
        else:
            command.update(status="Success" if proc.returncode == 0 else "Failed", code=proc.returncode)
        command.update(stdout=out.decode("utf-8", "replace")[:24000], stderr=err.decode("utf-8", "replace")[:8000])

    def _GetCommandInvocation(self, body):  # noqa: N802
        command = self.commands.get(body["CommandId"])
        if command is None or body["InstanceId"] != self.instance_id:
            return self._error("InvocationDoesNotExist", "no such invocation")
        return self._answer("GetCommandInvocation", {
            "CommandId": body["CommandId"], "InstanceId": self.instance_id, "DocumentName": "AWS-RunShellScript",
            "PluginName": "aws:runShellScript", "Status": command["status"],
            "StatusDetails": command.get("details", command["status"]), "ResponseCode": command["code"],
            "StandardOutputContent": command["stdout"], "StandardErrorContent": command["stderr"],
        })

    def _CancelCommand(self, body):  # noqa: N802
        for command_id in [body["CommandId"]]:
            proc = self.commands.get(command_id, {}).get("proc")
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, 9)
        return self._answer("CancelCommand", {})


@pytest.fixture
def ssm(monkeypatch, tmp_path):
    client = botocore.session.get_session().create_client(
        "ssm", region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")  # noqa: S106
    peer = RunCommandPeer(client, INSTANCE, tmp_path)
    peer.clients = []

    def provisioner_client(cluster, service):
        peer.clients.append((cluster.pk, service))
        return client

    monkeypatch.setattr(aws, "provisioner_client", provisioner_client)
    peer.cluster = Cluster(pk=77, slug="cloud", name="Cloud", backend=Cluster.Backend.SSM, home_template="/home/{username}",
                           backend_settings={"region": REGION, "instance_id": INSTANCE, "role_arn": ROLE})
    yield peer
    for command in peer.commands.values():
        if command["proc"] is not None and command["proc"].poll() is None:
            os.killpg(command["proc"].pid, 9)
            command["proc"].wait(5)


def test_ssm_script_is_the_helper_with_quoted_arguments():
    script = ssm_provision_script(["create", "--user", "carol", "--home", "/home/carol", "--shell", "/bin/bash"])
    lines = script.splitlines()
    assert lines[1] == "set -- create --user carol --home /home/carol --shell /bin/bash"
    assert script.endswith(HELPER.read_text())
    assert ssm_provision_script(["lookup", "--user", "it's"]).splitlines()[1] == "set -- lookup --user 'it'\"'\"'s'"
    for bad in (["create", "a\nb"], ["x\x00"], []):
        with pytest.raises(ValueError):
            ssm_provision_script(bad)


def test_provisioner_credentials_have_their_own_subject(monkeypatch):
    seen = {}
    monkeypatch.setattr(aws, "_client", lambda s, service, **kw: seen.update(kw, service=service) or "client")
    cluster = Cluster(pk=77, slug="cloud", backend=Cluster.Backend.SSM,
                      backend_settings={"region": REGION, "instance_id": INSTANCE, "role_arn": ROLE})
    assert aws.provisioner_client(cluster, "ssm") == "client"
    assert seen == {"service": "ssm", "subject": "cluster-77-provisioner", "email": "", "run_as": "clusterra-provisioner",
                    "id_token": None, "token_source": "portal"}


@needs_root
@pytest.mark.slow
@pytest.mark.slurm
def test_ssm_create_lookup_lock_unlock_run_the_helper_as_root_on_the_instance(ssm, throwaway, slurm_account):
    name, uid = throwaway()
    cluster = ssm.cluster
    assert head_node_account(cluster, name) is None
    assert head_node_account(cluster, "root") == (0, "/root")
    result = create_posix_account(cluster, username=name, uid=uid, slurm_account=slurm_account)
    assert result.steps[0] == f"created POSIX user {name} (uid {uid}, group {name} gid {uid}, home /home/{name} 0700, shell /bin/bash)"
    assert result.steps[-1] == f"added Slurm association {name} → account {slurm_account}"
    assert head_node_account(cluster, name) == (uid, f"/home/{name}")
    assert head_node_uid_owner(cluster, uid) == name
    assert association(name, slurm_account)

    sends = [body for operation, body in ssm.requests if operation == "SendCommand"]
    create = sends[2]
    assert create["Comment"] == f"Clusterra cloud: provision create {name}"
    assert create["Parameters"]["commands"] == [ssm_provision_script(
        ["create", "--user", name, "--uid", str(uid), "--home", f"/home/{name}", "--shell", "/bin/bash",
         "--slurm-account", slurm_account, "--min-uid", "1000"])]
    assert create["Parameters"]["executionTimeout"] == ["300"] and create["TimeoutSeconds"] == 300
    assert {c for c in ssm.clients} == {(77, "ssm")}

    held = sbatch(name, "--hold", "--wrap", "sleep 600")
    result = lock_posix_account(cluster, username=name, uid=uid, kill_processes=True, cancel_jobs=True)
    assert result.steps == [f"locked POSIX user {name} (password locked, account expired)",
                            f"cancelled 1 Slurm job(s) of {name}", f"no processes of {name} (uid {uid}) were running"]
    assert job_state(held) == "CANCELLED"
    with pytest.raises(AccountLocked):
        check_posix_account(name, uid)
    result = unlock_posix_account(cluster, username=name, uid=uid, slurm_account=None)
    assert result.steps == [f"unlocked POSIX user {name} (uid {uid}, home /home/{name})",
                            f"home /home/{name} already present (owner {name}, mode 0700)"]
    assert check_posix_account(name, uid).pw_dir == f"/home/{name}"


@needs_root
def test_ssm_refusals_are_not_retryable_and_an_unreachable_head_node_is(ssm):
    with pytest.raises(ProvisioningError, match="The name daemon is taken on the head node by uid 1") as caught:
        create_posix_account(ssm.cluster, username="daemon", uid=61999, slurm_account=None)
    assert caught.value.retryable is False

    ssm.deliver = False
    with pytest.raises(ProvisioningError, match="could not deliver.*Undeliverable") as caught:
        lock_posix_account(ssm.cluster, username="ctok", uid=61999, kill_processes=True, cancel_jobs=False)
    assert caught.value.retryable is True

    ssm.deliver, ssm.send_error = True, "ThrottlingException"
    with pytest.raises(ProvisioningError, match="throttling") as caught:
        head_node_account(ssm.cluster, "ctok")
    assert caught.value.retryable is True

    ssm.send_error = "AccessDeniedException"
    with pytest.raises(ProvisioningError, match="denied SendCommand") as caught:
        head_node_account(ssm.cluster, "ctok")
    assert caught.value.retryable is False


def test_ssm_bad_cluster_settings_are_refused(ssm):
    ssm.cluster.backend_settings = {"region": REGION}
    with pytest.raises(ProvisioningError, match="instance_id") as caught:
        head_node_account(ssm.cluster, "ctok")
    assert caught.value.retryable is False and ssm.requests == []
