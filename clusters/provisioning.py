"""Provisioning: a person's POSIX account (and Slurm association) on a cluster's head node.

Onboarding and offboarding (accounts/lifecycle.py) build on four calls:

    create_posix_account(cluster, username=, uid=, slurm_account=, shell=)   # useradd, home 0700, sacctmgr
    lock_posix_account(cluster, username=, uid=, kill_processes=, cancel_jobs=)
    unlock_posix_account(cluster, username=, uid=, slurm_account=)          # same uid and home as before
    head_node_account(cluster, username) -> (uid, home) | None               # is the name taken there?

Each returns a ProvisionResult whose `steps` say, in words, what was done or found already done, or
raises ProvisioningError (a message for a tenant admin; `retryable` says whether trying again later
may help). Every operation is idempotent: calling it again finishes what a failed call left half done.

The privileged work is one root-only POSIX sh script, clusters/provision_helper.sh, which checks all
of its arguments again (never root, never a uid below CLUSTERRA_TERMINAL_MIN_UID or the head node's
UID_MIN, a safe home directory). How it runs as root:
- local cluster, portal running as root (demo, CI): the script is executed directly;
- local cluster, portal running as a service user (production): `sudo -n <script> ...`, allowed by
  the sudoers line in docs/deployment.md ("Provisioning accounts");
- SSM cluster: the script's text, preceded by `set -- <arguments>`, goes to the head node with
  SendCommand (AWS-RunShellScript runs it as root with sh), through SsmExecutor.send_script, with
  the portal's own provisioner credentials (clusters.aws.provisioner_client): there is no person's
  account to borrow.
"""

import logging
import os
import pwd
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.core.exceptions import ValidationError

from clusterra.durations import duration_words
from clusters import aws
from clusters.executors import ExecutorError, SsmExecutor
from clusters.models import Cluster, posix_username_validator
from clusters.spawn import CaptureTimeout, OutputTooLarge, run_captured

logger = logging.getLogger(__name__)

HELPER = Path(__file__).resolve().with_name("provision_helper.sh")
# useradd, four sacctmgr calls, or waiting for cancelled jobs and killed processes: each command in
# the helper has its own limit (60 s); this bounds the whole run.
TIMEOUT = 300
LOOKUP_TIMEOUT = 60
MAX_OUTPUT = 1024 * 1024
_SPAWN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# The helper's exit statuses (see its header).
EXIT_BAD_ARGUMENTS, EXIT_REFUSED, EXIT_RETRY, EXIT_NO_SUCH_USER = 10, 11, 12, 13

# The same rules as the helper's (and as clusters.models' Slurm account validator).
_SLURM_ACCOUNT = re.compile(r"^[a-z0-9_][a-z0-9_.-]{0,63}$")
_HOME_CHARS = re.compile(r"^/[A-Za-z0-9._/@+-]*$")
_SHELL = re.compile(r"^/[A-Za-z0-9._/+-]+$")
_RESERVED_UIDS = {65534, 4294967295}  # nobody / (uid_t)-1


class ProvisioningError(Exception):
    """The head node could not be brought to the wanted state; str() is fit for a tenant admin.

    retryable: trying again later may work (head node or slurmdbd down, timeout, AWS throttling);
    False when it was refused (name or uid taken, system account, unsafe home, bad setup).
    steps: what was done before it failed (the next call carries on from there).
    """

    def __init__(self, message: str, *, retryable: bool = False, steps: list[str] | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.steps = steps or []


@dataclass
class ProvisionResult:
    steps: list[str] = field(default_factory=list)


# --- argument checks (again in the helper) ---------------------------------------------------------
def _check_name(username: str) -> None:
    try:
        posix_username_validator(username)
    except ValidationError:
        raise ProvisioningError(f"{username!r} is not a valid POSIX user name.") from None


def _check_identity(username: str, uid: int) -> None:
    """Never root, never a system account."""
    _check_name(username)
    if username == "root":
        raise ProvisioningError("The portal never manages root.")
    if not isinstance(uid, int) or isinstance(uid, bool) or uid == 0 or uid < settings.TERMINAL_MIN_UID:
        raise ProvisioningError(f"uid {uid} is below {settings.TERMINAL_MIN_UID} (CLUSTERRA_TERMINAL_MIN_UID): "
                                "the portal never manages system accounts.")
    if uid in _RESERVED_UIDS or uid > 4294967294:
        raise ProvisioningError(f"uid {uid} is reserved (nobody / no user).")


def _home(cluster: Cluster, username: str) -> str:
    home = cluster.home_directory(username)
    if (not _HOME_CHARS.match(home) or os.path.normpath(home) != home or os.path.dirname(home) == "/"
            or username not in home.split("/")):
        raise ProvisioningError(
            f"The cluster's home directory for {username} would be {home!r}: it must be an absolute path below a "
            f"directory, of letters, digits and ._@+-, with {username} as one of its components (home template "
            f"{cluster.home_template!r})."
        )
    return home


def _check_shell(shell: str) -> None:
    if not _SHELL.match(shell) or os.path.normpath(shell) != shell:
        raise ProvisioningError(f"{shell!r} is not an absolute path to a shell.")


def _check_slurm_account(slurm_account: str | None) -> None:
    if slurm_account is not None and not _SLURM_ACCOUNT.match(slurm_account):
        raise ProvisioningError(f"{slurm_account!r} is not a valid Slurm account name "
                                "(lowercase letters, digits, '_', '.' and '-').")


def _slurm_args(slurm_account: str | None) -> list[str]:
    return ["--slurm-account", slurm_account] if slurm_account else []


# --- the API ---------------------------------------------------------------------------------------
def create_posix_account(cluster: Cluster, *, username: str, uid: int, slurm_account: str | None,
                         shell: str = "/bin/bash") -> ProvisionResult:
    """Create (or adopt, if it is exactly this uid and home) the POSIX account, its 0700 home and Slurm association."""
    _check_identity(username, uid)
    home = _home(cluster, username)
    _check_shell(shell)
    _check_slurm_account(slurm_account)
    args = ["create", "--user", username, "--uid", str(uid), "--home", home, "--shell", shell, *_slurm_args(slurm_account)]
    return ProvisionResult(_steps(_helper(cluster, args, username=username)))


def lock_posix_account(cluster: Cluster, *, username: str, uid: int, kill_processes: bool,
                       cancel_jobs: bool) -> ProvisionResult:
    """Lock the account (password locked, account expired); optionally cancel its Slurm jobs, kill its processes."""
    _check_identity(username, uid)
    args = ["lock", "--user", username, "--uid", str(uid)]
    args += ["--cancel-jobs"] if cancel_jobs else []
    args += ["--kill-processes"] if kill_processes else []
    return ProvisionResult(_steps(_helper(cluster, args, username=username)))


def unlock_posix_account(cluster: Cluster, *, username: str, uid: int, slurm_account: str | None) -> ProvisionResult:
    """Unlock an existing account (same uid and home), make sure of its home and Slurm association."""
    _check_identity(username, uid)
    home = _home(cluster, username)
    _check_slurm_account(slurm_account)
    args = ["unlock", "--user", username, "--uid", str(uid), "--home", home, *_slurm_args(slurm_account)]
    return ProvisionResult(_steps(_helper(cluster, args, username=username)))


def head_node_account(cluster: Cluster, username: str) -> tuple[int, str] | None:
    """(uid, home) of `username` on the head node, or None if the name is free there. Answers for root too."""
    _check_name(username)
    if cluster.backend == Cluster.Backend.LOCAL:  # reading passwd needs no privilege
        try:
            entry = pwd.getpwnam(username)
        except KeyError:
            return None
        return entry.pw_uid, entry.pw_dir
    out = _helper(cluster, ["lookup", "--user", username], username=username, timeout=LOOKUP_TIMEOUT)
    answer = _answer(out, "account")
    if answer == "none":
        return None
    uid, _, home = answer.partition(" ")
    if not uid.isdigit() or not home:
        raise ProvisioningError(f"The head node answered the lookup of {username} with {answer[:100]!r}.")
    return int(uid), home


def head_node_uid_owner(cluster: Cluster, uid: int) -> str | None:
    """The name that has `uid` on the head node, or None if the uid is free there."""
    if not isinstance(uid, int) or isinstance(uid, bool) or not 0 <= uid <= 4294967294:
        raise ProvisioningError(f"{uid!r} is not a uid.")
    if cluster.backend == Cluster.Backend.LOCAL:
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return None
    out = _helper(cluster, ["lookup", "--uid", str(uid)], username=f"uid {uid}", timeout=LOOKUP_TIMEOUT)
    answer = _answer(out, "owner")
    return None if answer == "none" else answer


# --- running the helper ----------------------------------------------------------------------------
def _helper(cluster: Cluster, args: list[str], *, username: str, timeout: float | None = None) -> str:
    """Run the helper with `args` as root on the cluster's head node; its stdout, or ProvisioningError."""
    timeout = timeout or TIMEOUT
    if args[0] != "lookup":
        args = [*args, "--min-uid", str(settings.TERMINAL_MIN_UID)]
    if cluster.backend == Cluster.Backend.LOCAL:
        code, stdout, stderr = _run_local(args, timeout)
    elif cluster.backend == Cluster.Backend.SSM:
        code, stdout, stderr = _run_ssm(cluster, args, username, timeout)
    else:
        raise ProvisioningError(f"The portal cannot provision accounts on a {cluster.backend!r} cluster.")
    steps = _steps(stdout)
    logger.info("provision %s cluster=%s user=%s exit=%s steps=%s", args[0], cluster.slug, username, code, steps)
    if code == 0:
        return stdout
    errors = [line.removeprefix("error: ") for line in stderr.splitlines() if line.startswith("error: ")]
    message = " ".join(errors) or stderr.strip()[-500:] or f"exit status {code}"
    logger.warning("provision %s cluster=%s user=%s failed (exit %s): %s", args[0], cluster.slug, username, code, message)
    if code in (EXIT_BAD_ARGUMENTS, EXIT_REFUSED, EXIT_NO_SUCH_USER):
        raise ProvisioningError(message, steps=steps)
    if code == EXIT_RETRY:
        raise ProvisioningError(message, retryable=True, steps=steps)
    if code == 1 and stderr.startswith("sudo:"):
        raise ProvisioningError(
            f"sudo refused to run the provisioning helper ({message}): give the portal's service user the sudoers "
            "rule in docs/deployment.md (Provisioning accounts).", steps=steps)
    raise ProvisioningError(f"The provisioning helper failed on the head node (exit status {code}): {message}", steps=steps)


def helper_argv(args: list[str]) -> list[str]:
    """The helper itself when we are root, else through `sudo -n` (which must allow exactly this path)."""
    if os.geteuid() == 0:
        return [str(HELPER), *args]
    # posix_spawnp would search the portal's own PATH: look sudo up where we mean to.
    sudo = shutil.which("sudo", path=_SPAWN_PATH)
    if sudo is None:
        raise ProvisioningError("The portal does not run as root and sudo is not installed: it cannot create or lock "
                                "accounts (docs/deployment.md, Provisioning accounts).")
    return [sudo, "-n", "--", str(HELPER), *args]


def _run_local(args: list[str], timeout: float) -> tuple[int, str, str]:
    argv = helper_argv(args)
    try:
        result = run_captured(argv, env={"PATH": _SPAWN_PATH}, stdin=None, timeout=timeout, max_output=MAX_OUTPUT)
    except OSError as exc:
        raise ProvisioningError(f"Could not run the provisioning helper ({argv[0]}): {exc.strerror}.") from None
    except CaptureTimeout:
        raise ProvisioningError(f"The provisioning helper did not finish within {duration_words(timeout)}.", retryable=True) from None
    except OutputTooLarge:
        raise ProvisioningError("The provisioning helper printed far more than expected.") from None
    return result.returncode, result.stdout.decode("utf-8", "replace"), result.stderr.decode("utf-8", "replace")


class _ProvisionerSsm(SsmExecutor):
    """SsmExecutor with the portal's provisioner credentials instead of a person's or the poller's."""

    def _client(self, account, service: str):
        try:
            return aws.provisioner_client(self.cluster, service)
        except aws.AwsError as exc:
            raise ExecutorError(str(exc), retryable=exc.retryable) from None
        except (ClientError, BotoCoreError) as exc:
            raise self._aws_error(exc, "AssumeRoleWithWebIdentity") from None

    def _forget_credentials(self, account) -> None:
        aws.forget_credentials(aws.provisioner_subject(self.cluster))


def ssm_provision_script(args: list[str]) -> str:
    """The helper's text with its arguments in front, every word shell-quoted, for SendCommand."""
    if not args or not all(isinstance(a, str) and "\x00" not in a and "\n" not in a for a in args):
        raise ValueError("arguments must be strings without NUL or newline")
    script = "\n".join([
        "# Clusterra: account provisioning (clusters/provision_helper.sh), as root",
        "set -- " + " ".join(shlex.quote(a) for a in args),
        HELPER.read_text(encoding="utf-8"),
    ])
    # SSM resolves {{ssm:...}} references inside parameters, even in quotes. The arguments are checked
    # (names, numbers, plain paths) and the helper has none, so this cannot happen; never send it.
    if "{{" in script:
        raise ValueError("the script would contain an SSM parameter reference")
    return script


def _run_ssm(cluster: Cluster, args: list[str], username: str, timeout: float) -> tuple[int, str, str]:
    executor = _ProvisionerSsm(cluster)
    try:
        result = executor.send_script(None, ssm_provision_script(args), argv=["provision_helper.sh", args[0]],
                                      username=username, timeout=timeout,
                                      comment=f"Clusterra {cluster.slug}: provision {args[0]} {username}")
    except ExecutorError as exc:
        raise ProvisioningError(str(exc), retryable=exc.retryable) from None
    return result.returncode, result.stdout.decode("utf-8", "replace"), result.stderr.decode("utf-8", "replace")


# --- the helper's output ---------------------------------------------------------------------------
def _steps(stdout: str) -> list[str]:
    return [line.removeprefix("step: ") for line in stdout.splitlines() if line.startswith("step: ")]


def _answer(stdout: str, key: str) -> str:
    for line in stdout.splitlines():
        if line.startswith(f"{key}: "):
            return line.removeprefix(f"{key}: ")
    raise ProvisioningError(f"The head node gave no answer to the lookup (output: {stdout.strip()[:200]!r}).")
