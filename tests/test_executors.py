"""The local executor runs argv lists as the mapped POSIX user — real processes, no mocks."""

import os
import pwd

import pytest

from clusters.executors import CommandTimeout, ExecutorError, LocalExecutor
from clusters.models import ClusterAccount

pytestmark = pytest.mark.django_db


def _account(cast, user=None) -> ClusterAccount:
    return ClusterAccount.objects.get(cluster=cast.hpc, user=user or cast.bob)


def test_runs_as_the_mapped_user_with_a_clean_environment(cast):
    result = LocalExecutor().run(_account(cast), ["sh", "-c", 'id -un; echo "HOME=$HOME"; env | sort'], env={"SLURM_TIME_FORMAT": "%s"})
    assert result.ok
    lines = result.stdout.decode().splitlines()
    assert lines[0] == cast.posix.pw_name and lines[1] == f"HOME={cast.posix.pw_dir}"
    names = {line.split("=", 1)[0] for line in lines[2:]}
    assert "SLURM_TIME_FORMAT" in names and "DJANGO_SETTINGS_MODULE" not in names and "CLUSTERRA_DATA_DIR" not in names


def test_arguments_are_never_interpreted_by_a_shell(cast):
    tricky = "$(touch /tmp/pwned); `id`; 'quote\" | & > < *"
    result = LocalExecutor().run(_account(cast), ["printf", "%s", tricky])
    assert result.stdout.decode() == tricky
    assert not os.path.exists("/tmp/pwned")


def test_stdin_and_exit_status(cast):
    result = LocalExecutor().run(_account(cast), ["sh", "-c", "cat; echo oops >&2; exit 3"], stdin=b"script body\n")
    assert result.returncode == 3 and result.stdout == b"script body\n" and result.error_text() == "oops"


def test_timeout_kills_the_command(cast):
    with pytest.raises(CommandTimeout, match="within 0.5 seconds"):
        LocalExecutor().run(_account(cast), ["sleep", "30"], timeout=0.5)


def test_system_accounts_are_refused(cast):
    account = _account(cast)
    account.posix_username, account.uid = "daemon", pwd.getpwnam("daemon").pw_uid
    with pytest.raises(ExecutorError, match="below the minimum"):
        LocalExecutor().run(account, ["id"])
    account.posix_username, account.uid = "no-such-user-x", 4242
    with pytest.raises(ExecutorError, match="does not exist"):
        LocalExecutor().run(account, ["id"])
