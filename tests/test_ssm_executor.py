"""The SSM executor: Slurm argv as the mapped user through SendCommand + GetCommandInvocation.

The AWS side is botocore's Stubber (exact request parameters asserted) or moto; the script that
SendCommand would run as root on the head node is executed here for real, against a PATH of small
`runuser`/`id`/`getent` shims, so its quoting, its account checks and the stdin round-trip are
proven rather than assumed.
"""

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import botocore.session
import pytest
from botocore.stub import ANY, Stubber
from django.conf import settings
from moto import mock_aws

from clusters.executors import (
    EXIT_NO_SUCH_USER,
    EXIT_UID_MISMATCH,
    SSM_PARAMETERS_MAX_BYTES,
    CommandTimeout,
    ExecutorError,
    SsmExecutor,
    executor_for,
    ssm_script,
)
from clusters.models import ClusterAccount
from jobs.services import PollAccount

pytestmark = pytest.mark.django_db

REGION = "us-east-1"
INSTANCE = "i-0123456789abcdef0"
ROLE = "arn:aws:iam::123456789012:role/clusterra-hpc"
BUCKET = "clusterra-hpc-logs"
SQUEUE_FIXTURE = Path(__file__).parent / "fixtures" / "slurm" / "squeue.out"


# --- fixtures -------------------------------------------------------------------------------------
class FakeClock:
    """time.monotonic + time.sleep for the executor: sleeping advances time, nothing waits."""

    def __init__(self):
        self.now, self.sleeps = 1000.0, []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def _botocore_client(service):
    return botocore.session.get_session().create_client(
        service, region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing"
    )


class Aws:
    """Clients handed to the executor in place of clusters.aws.account_client / poller_client."""

    def __init__(self):
        self.clients = {"ssm": _botocore_client("ssm"), "s3": _botocore_client("s3")}
        self.ssm = Stubber(self.clients["ssm"])
        self.s3 = Stubber(self.clients["s3"])
        self.calls, self.sent = [], []
        self.clients["ssm"].meta.events.register("before-parameter-build.ssm.SendCommand",
                                                 lambda params, **kw: self.sent.append(params))

    def account_client(self, account, service, *, id_token=None):
        self.calls.append(("account", account.posix_username, service))
        return self.clients[service]

    def poller_client(self, cluster, posix_username, service):
        self.calls.append(("poller", posix_username, service))
        return self.clients[service]


@pytest.fixture
def aws(monkeypatch):
    from clusters import aws as aws_module

    fake = Aws()
    monkeypatch.setattr(aws_module, "account_client", fake.account_client)
    monkeypatch.setattr(aws_module, "poller_client", fake.poller_client)
    with fake.ssm, fake.s3:
        yield fake
    fake.ssm.assert_no_pending_responses()
    fake.s3.assert_no_pending_responses()


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    """The cast's users are created with passwords; nothing here signs in, so hash them cheaply."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def ssm_cast(cast):
    cast.hpc.backend = "ssm"
    cast.hpc.backend_settings = {"region": REGION, "instance_id": INSTANCE, "role_arn": ROLE}
    cast.hpc.save()
    cast.bob_account = ClusterAccount.objects.select_related("cluster").get(cluster=cast.hpc, user=cast.bob)
    return cast


@pytest.fixture
def clock():
    return FakeClock()


def _executor(cast, clock, **kw):
    return SsmExecutor(cast.hpc, sleep=clock.sleep, clock=clock.clock, **kw)


def _command_id():
    return str(uuid.uuid4())


def _send(aws, command_id, *, params=None, **extra):
    aws.ssm.add_response("send_command", {"Command": {"CommandId": command_id}}, params or {
        "InstanceIds": [INSTANCE], "DocumentName": "AWS-RunShellScript", "Parameters": ANY, "TimeoutSeconds": ANY,
        "Comment": ANY, "CloudWatchOutputConfig": {"CloudWatchOutputEnabled": False}, **extra,
    })


def _invocation(aws, command_id, status, *, code=None, stdout="", stderr="", details=None, **extra):
    response = {"CommandId": command_id, "InstanceId": INSTANCE, "DocumentName": "AWS-RunShellScript",
                "PluginName": "aws:runShellScript", "Status": status, "StatusDetails": details or status,
                "StandardOutputContent": stdout, "StandardErrorContent": stderr, **extra}
    if code is not None:
        response["ResponseCode"] = code
    aws.ssm.add_response("get_command_invocation", response, {"CommandId": command_id, "InstanceId": INSTANCE})


def _nothing_sent(monkeypatch):
    """Any AWS client factory call fails the test: the refusal must come before AWS."""
    from clusters import aws as aws_module

    def boom(*a, **k):
        raise AssertionError("no AWS call may be made")

    monkeypatch.setattr(aws_module, "account_client", boom)
    monkeypatch.setattr(aws_module, "poller_client", boom)


# --- the script, executed for real against shims --------------------------------------------------
HOSTILE = [
    "plain", "two words", "it's", 'say "hi"', "$(touch {canary})", "`touch {canary}`", "${HOME}", "$0 $1 $@",
    "line1\nline2\n", "tab\there", "üñíçødé ✓ 🚀", "back\\slash\\", "*", "; touch {canary}", "| cat", "&& true",
    "-u", "--", "", "'", '"', "\\", "%s%n%%", "=x", "a=b", "\x1f\x01\x7f", " leading and trailing ",
]
DUMP = ("import json, os, sys; json.dump({'argv': sys.argv[1:], 'env': dict(os.environ), 'cwd': os.getcwd(), "
        "'stdin': sys.stdin.buffer.read().hex()}, sys.stdout)")


def _shims(tmp_path, *, user, uid, home, id_answer=None):
    """runuser drops `-u USER --` (and records USER); id and getent answer for `user` only."""
    shim = tmp_path / "shim"
    shim.mkdir()
    log = tmp_path / "runuser.log"
    (shim / "runuser").write_text(
        "#!/bin/sh\n"
        '[ "$1" = -u ] && [ "$3" = -- ] || { echo "runuser shim: bad arguments" >&2; exit 90; }\n'
        f'printf "%s\\n" "$2" >> {log}\n'
        'shift 3\nexec "$@"\n'
    )
    answer = f"echo {id_answer if id_answer is not None else uid}; exit 0" if id_answer != "missing" else "exit 1"
    (shim / "id").write_text(
        "#!/bin/sh\n"
        '[ "$1" = -u ] && [ "$2" = -- ] || { echo "id shim: bad arguments" >&2; exit 91; }\n'
        f'if [ "$3" = {user} ]; then {answer}; fi\n'
        'echo "id: $3: no such user" >&2; exit 1\n'
    )
    (shim / "getent").write_text(
        "#!/bin/sh\n"
        f'[ "$1" = passwd ] && [ "$2" = {user} ] && echo "{user}:x:{uid}:{uid}:Test:{home}:/bin/bash" && exit 0\n'
        "exit 2\n"
    )
    for f in shim.iterdir():
        f.chmod(0o755)
    return shim, log


def _run_script(script, shim, *, shell="sh"):
    """Run the script as the SSM agent would (a POSIX sh as root), with the shims first on PATH."""
    return subprocess.run([shutil.which(shell), "-c", script], capture_output=True, timeout=60, cwd=str(shim),
                          env={"PATH": f"{shim}:/usr/bin:/bin"})


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_script_runs_hostile_argv_env_and_stdin_exactly(tmp_path, shell):
    canary = tmp_path / "pwned"
    argv = [sys.executable, "-c", DUMP, *(a.replace("{canary}", str(canary)) for a in HOSTILE)]
    env = {"SLURM_TIME_FORMAT": "%s", "WEIRD": f"$(touch {canary}) 'q' \"dq\" `x` \n; ü", "EMPTY": ""}
    stdin = bytes(range(256)) * 4 + "#!/bin/bash\necho 'ü' $(date)\n".encode() + b"no newline at the end"
    home = str(tmp_path / "home")
    shim, log = _shims(tmp_path, user="alice-x", uid=4242, home=home)

    proc = _run_script(ssm_script("alice-x", 4242, argv, stdin=stdin, env=env), shim, shell=shell)

    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["argv"] == [a.replace("{canary}", str(canary)) for a in HOSTILE]
    assert bytes.fromhex(seen["stdin"]) == stdin
    assert seen["cwd"] == "/"
    assert seen["env"] == {
        "LANG": settings.TERMINAL_LANG, "HOME": home, "USER": "alice-x", "LOGNAME": "alice-x", "SHELL": "/bin/bash",
        "PATH": settings.TERMINAL_PATH, **env,
    }
    assert log.read_text() == "alice-x\n"
    assert not canary.exists()


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_words_holding_ssm_parameter_references_travel_encoded(tmp_path, shell):
    """SSM resolves {{ssm:name}} inside SendCommand parameters, even in quotes: no "{{" may reach AWS."""
    canary = tmp_path / "pwned"
    argv = [sys.executable, "-c", DUMP, "{{ssm:/prod/db-password}}", "", "x\n\n", *(a.replace("{canary}", str(canary)) for a in HOSTILE)]
    env = {"JOB": f"{{{{ssm-secure:key}}}} $(touch {canary})", "HOME": "/override {{x}}"}
    shim, log = _shims(tmp_path, user="alice-x", uid=4242, home="/home/alice-x")
    script = ssm_script("alice-x", 4242, argv, stdin=b"{{ssm:in-stdin}}\n", env=env)
    assert "{{" not in script

    proc = _run_script(script, shim, shell=shell)

    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["argv"] == argv[3:] and bytes.fromhex(seen["stdin"]) == b"{{ssm:in-stdin}}\n"
    assert seen["env"] == {"LANG": settings.TERMINAL_LANG, "HOME": "/override {{x}}", "USER": "alice-x", "LOGNAME": "alice-x",
                           "SHELL": "/bin/bash", "PATH": settings.TERMINAL_PATH, "JOB": env["JOB"]}
    assert not canary.exists() and log.read_text() == "alice-x\n"


def test_script_without_stdin_reads_dev_null_and_keeps_exit_status_and_stderr(tmp_path):
    shim, _ = _shims(tmp_path, user="bob-x", uid=5000, home="/home/bob-x")
    argv = ["sh", "-c", 'cat; echo "to stderr" >&2; exit 7']
    proc = _run_script(ssm_script("bob-x", 5000, argv), shim)
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, b"", b"to stderr\n")


def test_caller_env_overrides_the_base_variables_like_clean_environment(tmp_path):
    shim, _ = _shims(tmp_path, user="bob-x", uid=5000, home="/home/bob-x")
    argv = [sys.executable, "-c", DUMP]
    proc = _run_script(ssm_script("bob-x", 5000, argv, env={"LANG": "de_DE.UTF-8", "PATH": "/opt/slurm/bin"}), shim)
    seen = json.loads(proc.stdout)["env"]
    assert seen["LANG"] == "de_DE.UTF-8" and seen["PATH"] == "/opt/slurm/bin" and seen["HOME"] == "/home/bob-x"
    seen.pop("LC_CTYPE", None)  # Python's own PEP 538 coercion when de_DE.UTF-8 is not installed here
    assert len(seen) == 6


def test_script_refuses_a_missing_user_and_a_uid_mismatch_on_the_instance(tmp_path):
    shim, log = _shims(tmp_path, user="bob-x", uid=5000, home="/home/bob-x", id_answer="missing")
    proc = _run_script(ssm_script("bob-x", 5000, ["id"]), shim)
    assert proc.returncode == EXIT_NO_SUCH_USER and proc.stderr == b"clusterra-ssm: no-such-user\n"

    shutil.rmtree(tmp_path / "shim")
    shim, log = _shims(tmp_path, user="bob-x", uid=5000, home="/home/bob-x", id_answer=0)
    proc = _run_script(ssm_script("bob-x", 5000, ["id"]), shim)
    assert proc.returncode == EXIT_UID_MISMATCH and proc.stderr == b"clusterra-ssm: uid-mismatch 0\n"
    assert not log.exists()  # runuser never ran


def test_script_rejects_what_it_cannot_express():
    with pytest.raises(ValueError):
        ssm_script("bob-x", 5000, ["echo", "nul\x00byte"])
    with pytest.raises(ValueError):
        ssm_script("bob-x", 5000, ["A=B", "x"])
    with pytest.raises(ValueError):
        ssm_script("bob-x", 5000, ["echo"], env={"BAD NAME": "x"})
    with pytest.raises(ValueError):
        ssm_script("bob-x", 5000, "echo hi")


# --- SendCommand / GetCommandInvocation through Stubber -----------------------------------------
def test_exact_send_command_request_and_success(ssm_cast, aws, clock):
    account = ssm_cast.bob_account
    user, uid = account.posix_username, account.uid
    command_id = _command_id()
    script = "\n".join([
        "# Clusterra: run one command as a mapped POSIX user",
        "set -u",
        'PATH="${PATH:+$PATH:}/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"; export PATH',
        f"u={user}",
        'if ! actual=$(id -u -- "$u" 2>/dev/null); then',
        "  printf '%s\\n' 'clusterra-ssm: no-such-user' >&2; exit 201",
        "fi",
        f'if [ "$actual" != {uid} ]; then',
        "  printf '%s %s\\n' 'clusterra-ssm: uid-mismatch' \"$actual\" >&2; exit 202",
        "fi",
        'entry=$(getent passwd "$u") || entry=',
        "home=$(printf '%s\\n' \"$entry\" | cut -d: -f6); shell=$(printf '%s\\n' \"$entry\" | cut -d: -f7)",
        "home=${home:-/}; shell=${shell:-/bin/sh}",
        "cd / || exit 1",
        f'exec runuser -u "$u" -- env -i LANG={settings.TERMINAL_LANG} "HOME=$home" "USER=$u" "LOGNAME=$u" '
        f'"SHELL=$shell" PATH={settings.TERMINAL_PATH} SLURM_TIME_FORMAT=%s squeue --me \'--format=%i %j\' </dev/null',
        "",
    ])
    _send(aws, command_id, params={
        "InstanceIds": [INSTANCE],
        "DocumentName": "AWS-RunShellScript",
        "Parameters": {"commands": [script], "executionTimeout": ["30"]},
        "TimeoutSeconds": 30,
        "Comment": f"Clusterra hpc: squeue as {user}",
        "CloudWatchOutputConfig": {"CloudWatchOutputEnabled": False},
    })
    _invocation(aws, command_id, "Success", code=0, stdout="1 job one\n2 ü\n")

    result = _executor(ssm_cast, clock).run(account, ["squeue", "--me", "--format=%i %j"], env={"SLURM_TIME_FORMAT": "%s"})

    assert result.argv == ("squeue", "--me", "--format=%i %j")
    assert (result.returncode, result.stdout, result.stderr) == (0, "1 job one\n2 ü\n".encode(), b"")
    assert result.ok and result.seconds == pytest.approx(0.1)
    assert aws.calls == [("account", user, "ssm")]


def test_s3_output_location_and_long_timeouts_are_sent(ssm_cast, aws, clock):
    ssm_cast.hpc.backend_settings |= {"s3_bucket": BUCKET, "s3_prefix": "/hpc/ssm-output/"}
    command_id = _command_id()
    _send(aws, command_id, params={
        "InstanceIds": [INSTANCE], "DocumentName": "AWS-RunShellScript",
        "Parameters": {"commands": ANY, "executionTimeout": ["91"]}, "TimeoutSeconds": 91,
        "Comment": ANY, "CloudWatchOutputConfig": {"CloudWatchOutputEnabled": False},
        "OutputS3BucketName": BUCKET, "OutputS3KeyPrefix": "hpc/ssm-output",
    })
    _invocation(aws, command_id, "Success", code=0)
    assert _executor(ssm_cast, clock).run(ssm_cast.bob_account, ["sinfo"], timeout=90.5).ok


def test_comment_is_bounded_and_plain(ssm_cast, aws, clock):
    command_id = _command_id()
    _send(aws, command_id)
    _invocation(aws, command_id, "Success", code=0)
    _executor(ssm_cast, clock).run(ssm_cast.bob_account, ["/opt/slurm/bin/" + "é$(id)" * 50])
    comment = aws.sent[0]["Comment"]
    assert comment.startswith("Clusterra hpc: ") and comment.endswith(f" as {ssm_cast.bob_account.posix_username}")
    assert len(comment) <= 100 and comment.isascii() and "$(" not in comment and "/opt" not in comment


def test_poller_identity_uses_poller_credentials(ssm_cast, aws, clock):
    command_id = _command_id()
    _send(aws, command_id)
    _invocation(aws, command_id, "Success", code=0, stdout="ok")
    result = _executor(ssm_cast, clock).run(PollAccount("clusterra-poll", 5000), ["squeue"])
    assert result.stdout == b"ok"
    assert aws.calls == [("poller", "clusterra-poll", "ssm")]


def test_non_zero_exit_keeps_stderr(ssm_cast, aws, clock):
    command_id = _command_id()
    _send(aws, command_id)
    _invocation(aws, command_id, "Failed", code=1, details="Failed",
                stderr="sbatch: error: Batch job submission failed: Invalid partition name specified\n")
    result = _executor(ssm_cast, clock).run(ssm_cast.bob_account, ["sbatch", "x.sh"])
    assert result.returncode == 1 and not result.ok
    assert result.error_text() == "sbatch: error: Batch job submission failed: Invalid partition name specified"


def test_invocation_does_not_exist_yet_then_in_progress_then_success(ssm_cast, aws, clock):
    command_id = _command_id()
    _send(aws, command_id)
    for _ in range(2):
        aws.ssm.add_client_error("get_command_invocation", service_error_code="InvocationDoesNotExist",
                                 http_status_code=400, expected_params={"CommandId": command_id, "InstanceId": INSTANCE})
    _invocation(aws, command_id, "Pending")
    _invocation(aws, command_id, "InProgress")
    _invocation(aws, command_id, "Delayed")
    _invocation(aws, command_id, "InProgress")
    _invocation(aws, command_id, "Success", code=0, stdout="done\n")
    result = _executor(ssm_cast, clock).run(ssm_cast.bob_account, ["squeue"])
    assert result.stdout == b"done\n"
    assert clock.sleeps == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]  # backoff: doubling, capped at 1 s


def test_invocation_that_never_appears_is_an_error(ssm_cast, aws, clock):
    command_id = _command_id()
    _send(aws, command_id)
    for _ in range(4):
        aws.ssm.add_client_error("get_command_invocation", service_error_code="InvocationDoesNotExist", http_status_code=400)
    aws.ssm.add_response("cancel_command", {}, {"CommandId": command_id, "InstanceIds": [INSTANCE]})
    with pytest.raises(ExecutorError, match=rf"SSM accepted squeue but did not report it on the head node \(instance {INSTANCE}\).*InvocationDoesNotExist"):
        _executor(ssm_cast, clock, missing_grace=1.0).run(ssm_cast.bob_account, ["squeue"], timeout=30)


def test_timeout_cancels_the_command(ssm_cast, aws, clock):
    command_id = _command_id()
    _send(aws, command_id)
    for _ in range(5):  # sleeps 0.1 + 0.2 + 0.4 + 0.8 + 0.5 = the 2 s budget
        _invocation(aws, command_id, "InProgress")
    aws.ssm.add_response("cancel_command", {}, {"CommandId": command_id, "InstanceIds": [INSTANCE]})
    with pytest.raises(CommandTimeout, match=r"^sleep did not finish within 2 seconds\.$"):
        _executor(ssm_cast, clock).run(ssm_cast.bob_account, ["sleep", "100"], timeout=2)
    assert sum(clock.sleeps) == pytest.approx(2.0)


def test_timeout_while_never_delivered_names_the_agent(ssm_cast, aws, clock):
    command_id = _command_id()
    _send(aws, command_id)
    for _ in range(5):
        _invocation(aws, command_id, "Pending")
    aws.ssm.add_response("cancel_command", {}, {"CommandId": command_id, "InstanceIds": [INSTANCE]})
    with pytest.raises(CommandTimeout, match=f"instance {INSTANCE}.*did not pick up squeue.*SSM agent"):
        _executor(ssm_cast, clock).run(ssm_cast.bob_account, ["squeue"], timeout=2)


def test_cancel_failure_does_not_hide_the_timeout(ssm_cast, aws, clock):
    command_id = _command_id()
    _send(aws, command_id)
    _invocation(aws, command_id, "InProgress")
    aws.ssm.add_client_error("cancel_command", service_error_code="InvalidCommandId", http_status_code=400)
    with pytest.raises(CommandTimeout):
        _executor(ssm_cast, clock).run(ssm_cast.bob_account, ["squeue"], timeout=0.1)


@pytest.mark.parametrize(("status", "details", "code", "expected"), [
    ("Failed", "Undeliverable", -1, r"could not deliver squeue.*not managed by SSM.*Undeliverable"),
    ("TimedOut", "DeliveryTimedOut", -1, r"did not pick up squeue.*DeliveryTimedOut"),
    ("Failed", "InvalidPlatform", -1, "InvalidPlatform"),
    ("Cancelled", "Cancelled", None, r"squeue was cancelled.*Cancelled"),
    ("Failed", "Failed", None, r"AWS reports status Failed without an exit code"),
    ("Failed", "Terminated", -1, r"cancelled.*Terminated"),
])
def test_statuses_without_an_exit_code_are_errors_that_name_the_status(ssm_cast, aws, clock, status, details, code, expected):
    command_id = _command_id()
    _send(aws, command_id)
    _invocation(aws, command_id, status, details=details, code=code)
    with pytest.raises(ExecutorError, match=expected) as info:
        _executor(ssm_cast, clock).run(ssm_cast.bob_account, ["squeue"])
    assert not isinstance(info.value, CommandTimeout)


def test_execution_timed_out_on_the_instance_is_a_command_timeout(ssm_cast, aws, clock):
    command_id = _command_id()
    _send(aws, command_id)
    _invocation(aws, command_id, "TimedOut", details="ExecutionTimedOut", code=-1)
    with pytest.raises(CommandTimeout, match="did not finish within 30 seconds"):
        _executor(ssm_cast, clock).run(ssm_cast.bob_account, ["squeue"])


def test_account_checks_on_the_instance_become_clear_errors(ssm_cast, aws, clock):
    account = ssm_cast.bob_account
    for code, stderr, expected in [
        (EXIT_NO_SUCH_USER, "clusterra-ssm: no-such-user\n", f"POSIX user '{account.posix_username}' does not exist on the head node"),
        (EXIT_UID_MISMATCH, "clusterra-ssm: uid-mismatch 1234\n", f"has uid 1234 on the head node, but the mapping says {account.uid}"),
    ]:
        command_id = _command_id()
        _send(aws, command_id)
        _invocation(aws, command_id, "Failed", code=code, stderr=stderr)
        with pytest.raises(ExecutorError, match=expected):
            _executor(ssm_cast, clock).run(account, ["squeue"])


def test_a_command_that_itself_exits_201_is_just_a_result(ssm_cast, aws, clock):
    command_id = _command_id()
    _send(aws, command_id)
    _invocation(aws, command_id, "Failed", code=EXIT_NO_SUCH_USER, stderr="my own failure\n")
    assert _executor(ssm_cast, clock).run(ssm_cast.bob_account, ["false"]).returncode == EXIT_NO_SUCH_USER


@pytest.mark.parametrize(("code", "message", "expected"), [
    ("AccessDeniedException", "User: arn:aws:sts::123456789012:assumed-role/clusterra-hpc/u is not authorized",
     r"denied SendCommand \(AccessDenied\)"),
    ("InvalidInstanceId", "Instances not in a valid state for account", r"not managed by SSM, its SSM agent is offline.*InvalidInstanceId"),
    ("ThrottlingException", "Rate exceeded", r"throttling requests \(SendCommand: ThrottlingException\)"),
    ("InvalidDocument", "Document not found", r"SSM document is missing.*InvalidDocument"),
])
def test_send_command_client_errors_name_the_cause(ssm_cast, aws, clock, code, message, expected):
    aws.ssm.add_client_error("send_command", service_error_code=code, service_message=message, http_status_code=400)
    with pytest.raises(ExecutorError, match=expected):
        _executor(ssm_cast, clock).run(ssm_cast.bob_account, ["squeue"])


def test_client_error_while_polling_cancels_and_names_the_cause(ssm_cast, aws, clock):
    command_id = _command_id()
    _send(aws, command_id)
    aws.ssm.add_client_error("get_command_invocation", service_error_code="AccessDeniedException",
                             service_message="not authorized to perform ssm:GetCommandInvocation", http_status_code=400)
    aws.ssm.add_response("cancel_command", {}, {"CommandId": command_id, "InstanceIds": [INSTANCE]})
    with pytest.raises(ExecutorError, match=r"denied GetCommandInvocation \(AccessDenied\)"):
        _executor(ssm_cast, clock).run(ssm_cast.bob_account, ["squeue"])


# --- refused before any AWS call ----------------------------------------------------------------
@pytest.mark.parametrize("uid", [0, 1, 999])
def test_root_and_system_uids_are_refused_before_aws(ssm_cast, monkeypatch, clock, uid):
    _nothing_sent(monkeypatch)
    account = ssm_cast.bob_account
    account.uid = uid
    with pytest.raises(ExecutorError, match="below the minimum"):
        _executor(ssm_cast, clock).run(account, ["id"])
    with pytest.raises(ExecutorError, match="below the minimum"):
        _executor(ssm_cast, clock).run(PollAccount("root", uid), ["squeue"])


def test_invalid_user_names_are_refused_before_aws(ssm_cast, monkeypatch, clock):
    _nothing_sent(monkeypatch)
    with pytest.raises(ExecutorError, match="not valid"):
        _executor(ssm_cast, clock).run(PollAccount("x; reboot", 5000), ["squeue"])


def test_oversized_stdin_is_refused_before_aws_never_truncated(ssm_cast, monkeypatch, clock):
    _nothing_sent(monkeypatch)
    stdin = os.urandom(SSM_PARAMETERS_MAX_BYTES * 3 // 4)
    with pytest.raises(ExecutorError, match=r"sbatch cannot be sent through AWS SSM.*input.*at most 60 KiB.*script file"):
        _executor(ssm_cast, clock).run(ssm_cast.bob_account, ["sbatch"], stdin=stdin)


def test_large_stdin_under_the_limit_is_sent_whole(ssm_cast, aws, clock, tmp_path):
    account = ssm_cast.bob_account
    stdin = b"#!/bin/bash\n#SBATCH --job-name='x y'\n" + b"echo \"$HOME\" $(date) `id`\n" * 1400  # ~41 KiB
    command_id = _command_id()
    _send(aws, command_id)
    _invocation(aws, command_id, "Success", code=0, stdout="1\n")
    _executor(ssm_cast, clock).run(account, ["sh", "-c", "cat"], stdin=stdin)
    [sent] = aws.sent
    assert len(json.dumps(sent["Parameters"]).encode()) <= SSM_PARAMETERS_MAX_BYTES
    # the very script that went to AWS, run as the agent would: the user's input comes out byte for byte
    shim, log = _shims(tmp_path, user=account.posix_username, uid=account.uid, home="/")
    proc = _run_script(sent["Parameters"]["commands"][0], shim)
    assert (proc.returncode, proc.stdout) == (0, stdin) and log.read_text() == f"{account.posix_username}\n"


def test_bad_cluster_settings_are_an_executor_error(ssm_cast, monkeypatch, clock):
    _nothing_sent(monkeypatch)
    ssm_cast.hpc.backend_settings = {"region": REGION, "role_arn": ROLE}
    with pytest.raises(ExecutorError, match="instance_id"):
        _executor(ssm_cast, clock).run(ssm_cast.bob_account, ["squeue"])


# --- long output: S3 --------------------------------------------------------------------------------
def test_truncated_output_is_read_whole_from_s3(ssm_cast, aws, clock):
    ssm_cast.hpc.backend_settings |= {"s3_bucket": BUCKET, "s3_prefix": "ssm-out"}
    full_out = ("x" * 99 + "\n").encode() * 1000 + b"\xff\xfe invalid utf-8 kept\n"
    full_err = b"warning\n" * 2000
    command_id = _command_id()
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET)
        base = f"ssm-out/{command_id}/{INSTANCE}/awsrunShellScript/0.awsrunShellScript"
        s3.put_object(Bucket=BUCKET, Key=f"{base}/stdout", Body=full_out)
        s3.put_object(Bucket=BUCKET, Key=f"{base}/stderr", Body=full_err)
        aws.clients["s3"] = s3
        _send(aws, command_id, params={
            "InstanceIds": [INSTANCE], "DocumentName": "AWS-RunShellScript", "Parameters": ANY, "TimeoutSeconds": 30,
            "Comment": ANY, "CloudWatchOutputConfig": {"CloudWatchOutputEnabled": False},
            "OutputS3BucketName": BUCKET, "OutputS3KeyPrefix": "ssm-out",
        })
        _invocation(aws, command_id, "Success", code=0, stdout=full_out.decode("utf-8", "replace")[:24000],
                    stderr=full_err.decode()[:8000])
        result = _executor(ssm_cast, clock).run(ssm_cast.bob_account, ["squeue"])
    assert result.stdout == full_out and result.stderr == full_err
    assert aws.calls == [("account", ssm_cast.bob_account.posix_username, "ssm")] + [
        ("account", ssm_cast.bob_account.posix_username, "s3")] * 2


def test_output_url_from_aws_names_the_s3_key(ssm_cast, aws, clock):
    ssm_cast.hpc.backend_settings |= {"s3_bucket": BUCKET}
    command_id = _command_id()
    key = f"elsewhere/{command_id}/{INSTANCE}/awsrunShellScript/0.awsrunShellScript/stdout"
    aws.s3.add_response("get_object", {"Body": _body(b"y" * 30000), "ContentLength": 30000}, {"Bucket": BUCKET, "Key": key})
    _send(aws, command_id, params={
        "InstanceIds": [INSTANCE], "DocumentName": "AWS-RunShellScript", "Parameters": ANY, "TimeoutSeconds": 30,
        "Comment": ANY, "CloudWatchOutputConfig": {"CloudWatchOutputEnabled": False}, "OutputS3BucketName": BUCKET,
    })
    _invocation(aws, command_id, "Success", code=0, stdout="y" * 24000,
                StandardOutputUrl=f"https://s3.{REGION}.amazonaws.com/{BUCKET}/{key}")
    assert _executor(ssm_cast, clock).run(ssm_cast.bob_account, ["squeue"]).stdout == b"y" * 30000


def test_truncation_marker_without_bucket_is_a_clear_error(ssm_cast, aws, clock):
    command_id = _command_id()
    _send(aws, command_id)
    _invocation(aws, command_id, "Success", code=0, stdout="a" * 23980 + "--output truncated--")
    with pytest.raises(ExecutorError, match=r"longer than AWS SSM returns directly.*Configure s3_bucket"):
        _executor(ssm_cast, clock).run(ssm_cast.bob_account, ["squeue"])


def test_long_multibyte_stdout_without_bucket_is_not_silently_cut(ssm_cast, aws, clock):
    command_id = _command_id()
    _send(aws, command_id)
    _invocation(aws, command_id, "Success", code=0, stdout="ü" * 12000)  # 12,000 characters, 24,000 bytes
    with pytest.raises(ExecutorError, match="Configure s3_bucket"):
        _executor(ssm_cast, clock).run(ssm_cast.bob_account, ["squeue"])


def test_truncated_output_missing_from_s3_is_a_clear_error(ssm_cast, aws, clock):
    ssm_cast.hpc.backend_settings |= {"s3_bucket": BUCKET}
    command_id = _command_id()
    _send(aws, command_id, OutputS3BucketName=BUCKET)
    _invocation(aws, command_id, "Success", code=0, stderr="e" * 8000)
    for _ in range(3):
        aws.s3.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)
    with pytest.raises(ExecutorError, match=rf"stderr was too long.*s3://{BUCKET}/{command_id}/{INSTANCE}/.*/stderr.*instance role"):
        _executor(ssm_cast, clock).run(ssm_cast.bob_account, ["squeue"])


def _body(data: bytes):
    from io import BytesIO

    from botocore.response import StreamingBody

    return StreamingBody(BytesIO(data), len(data))


# --- wiring and the real botocore request path ----------------------------------------------------
def test_executor_for_an_ssm_cluster(ssm_cast):
    executor = executor_for(ssm_cast.hpc)
    assert isinstance(executor, SsmExecutor) and executor.cluster == ssm_cast.hpc


def test_jobs_poll_works_unchanged_on_an_ssm_cluster(ssm_cast, aws):
    from jobs.models import Job
    from jobs.services import refresh_jobs

    ssm_cast.hpc.poll_posix_username, ssm_cast.hpc.poll_uid = "clusterra-poll", 5000
    ssm_cast.hpc.save()
    command_id = _command_id()
    _send(aws, command_id)
    _invocation(aws, command_id, "Success", code=0, stdout=SQUEUE_FIXTURE.read_bytes().decode("utf-8", "replace"))
    result = refresh_jobs(ssm_cast.hpc)
    # root's and slurm-selftest's jobs belong to no account of the cluster: counted, never stored.
    assert (result.jobs_in_queue, result.other_jobs) == (7, 2)
    assert Job.objects.get(cluster=ssm_cast.hpc, job_id="4").name == "ünïcode ✓"
    assert not Job.objects.filter(cluster=ssm_cast.hpc, job_id__in=["1", "2"]).exists()
    assert aws.calls == [("poller", "clusterra-poll", "ssm")]


def test_moto_send_command_through_the_real_request_path(ssm_cast, monkeypatch, clock):
    from clusters import aws as aws_module

    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        ssm = boto3.client("ssm", region_name=REGION)
        monkeypatch.setattr(aws_module, "account_client", lambda account, service, **kw: ssm)
        ssm_cast.hpc.backend_settings |= {"instance_id": instance}

        result = _executor(ssm_cast, clock).run(ssm_cast.bob_account, ["squeue", "--me", "it's $(odd)"], timeout=45)

        assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
        [command] = ssm.list_commands()["Commands"]
    assert command["DocumentName"] == "AWS-RunShellScript" and command["InstanceIds"] == [instance]
    assert command["Parameters"]["executionTimeout"] == ["45"] and command["TimeoutSeconds"] == 45
    assert command["Comment"] == f"Clusterra hpc: squeue as {ssm_cast.bob_account.posix_username}"
    assert command["Parameters"]["commands"] == [
        ssm_script(ssm_cast.bob_account.posix_username, ssm_cast.bob_account.uid, ["squeue", "--me", "it's $(odd)"])
    ]


# --- credentials ---------------------------------------------------------------------------------
def test_refused_credentials_are_forgotten_and_send_command_retried_once(ssm_cast, aws, clock, monkeypatch):
    from clusters import aws as aws_module

    forgotten = []
    monkeypatch.setattr(aws_module, "forget_credentials", lambda subject=None: forgotten.append(subject) or 1)
    aws.ssm.add_client_error("send_command", service_error_code="ExpiredTokenException",
                             service_message="The security token included in the request is expired", http_status_code=400)
    command_id = _command_id()
    _send(aws, command_id)
    _invocation(aws, command_id, "Success", code=0, stdout="ok")
    assert _executor(ssm_cast, clock).run(ssm_cast.bob_account, ["squeue"]).stdout == b"ok"
    assert forgotten == [aws_module.user_subject(ssm_cast.bob, ssm_cast.acme)]
    assert [c[2] for c in aws.calls] == ["ssm", "ssm"]


def test_credentials_refused_twice_name_the_cause(ssm_cast, aws, clock, monkeypatch):
    from clusters import aws as aws_module

    monkeypatch.setattr(aws_module, "forget_credentials", lambda subject=None: 1)
    for _ in range(2):
        aws.ssm.add_client_error("send_command", service_error_code="InvalidClientTokenId", http_status_code=403)
    with pytest.raises(ExecutorError, match=r"(?i)revoked|expired"):
        _executor(ssm_cast, clock).run(PollAccount("clusterra-poll", 5000), ["squeue"])


def test_inactive_account_gets_no_aws_access(ssm_cast, clock):
    rita = ClusterAccount.objects.select_related("cluster", "user").get(cluster=ssm_cast.hpc, user=ssm_cast.rita)
    with pytest.raises(ExecutorError, match="revoked"):
        _executor(ssm_cast, clock).run(rita, ["squeue"])


def test_unreachable_endpoint_is_a_clear_error_not_a_hang(ssm_cast, monkeypatch, clock):
    from botocore.config import Config

    from clusters import aws as aws_module

    dead = botocore.session.get_session().create_client(
        "ssm", region_name=REGION, endpoint_url="http://127.0.0.1:9", aws_access_key_id="testing",
        aws_secret_access_key="testing", config=Config(connect_timeout=1, retries={"max_attempts": 1}),
    )
    monkeypatch.setattr(aws_module, "account_client", lambda account, service, **kw: dead)
    with pytest.raises(ExecutorError, match=r"(?i)could not connect.*SendCommand"):
        _executor(ssm_cast, clock).run(ssm_cast.bob_account, ["squeue"])


def test_no_parameter_reference_reaches_send_command(ssm_cast, aws, clock):
    command_id = _command_id()
    _send(aws, command_id)
    _invocation(aws, command_id, "Success", code=0, stdout="7\n")
    _executor(ssm_cast, clock).run(ssm_cast.bob_account, ["sbatch", "--parsable", "--job-name={{ssm:/prod/db-password}}"],
                                   env={"NOTE": "{{resolve:secretsmanager:x}}"})
    assert "{{" not in json.dumps(aws.sent[0]["Parameters"])


def test_api_submit_of_an_inline_script_too_big_for_ssm_is_413(ssm_cast, monkeypatch):
    """The API says why (413, with the size and the way out) and nothing reaches AWS."""
    from django.test import Client

    from accounts.services import create_api_token

    _nothing_sent(monkeypatch)
    _, token = create_api_token(user=ssm_cast.bob, tenant=ssm_cast.acme, name="test")
    script = "#!/bin/sh\n" + "echo padding-padding-padding-padding\n" * 3000  # ~105 KiB: fine locally, too big for SSM
    response = Client().post(f"/v1/clusters/{ssm_cast.hpc.pk}/jobs", {"script": script}, content_type="application/json",
                             HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 413, response.content
    assert "SendCommand takes at most" in response.json()["detail"]
