"""POSIX identities on a local head node: who may be run as, and how to become them.

Shared by the terminal's local PTY backend and the local command executor, so both apply the same
rules: the system's own passwd entry is authoritative; never root, never a uid below
CLUSTERRA_TERMINAL_MIN_UID, and it must agree with the uid the portal mapped.
"""

import os
import pwd
import time

from django.conf import settings

_NO_LOGIN_SHELLS = {"nologin", "false"}
SHADOW = "/etc/shadow"


class PosixAccountError(Exception):
    """The POSIX account cannot be used; the message is fit for the user."""


class SystemAccountRefused(PosixAccountError):
    """The mapping points at an account the portal must never act as."""


class AccountLocked(PosixAccountError):
    """The account is locked on the head node (offboarded: clusters/provisioning.py)."""


def _expired_on(username: str) -> int | None:
    """The day (since 1970) the account expired, if its shadow entry says it has; None otherwise.

    Read only when /etc/shadow is readable (the portal runs as root); the spwd module is gone in
    Python 3.13. Locking sets the expiry to day 1 (`usermod --lock --expiredate 1`): the "!" of a
    locked password alone cannot be told apart from an account that never had a password.
    """
    try:
        with open(SHADOW, encoding="utf-8", errors="replace") as shadow:
            for line in shadow:
                fields = line.rstrip("\n").split(":")
                if fields[0] == username and len(fields) >= 8:
                    expire = fields[7]
                    # As shadow's own check: 0 or empty means never; expired from that day on.
                    if expire.isdigit() and 0 < int(expire) <= int(time.time() // 86400):
                        return int(expire)
                    return None
    except OSError:  # not root: unknown here; the account's state in the portal (revoked) still applies
        return None
    return None


def check_posix_account(username: str, expected_uid: int, *, need_login_shell: bool = False) -> pwd.struct_passwd:
    try:
        entry = pwd.getpwnam(username)
    except KeyError:
        raise PosixAccountError(f"The POSIX user {username!r} does not exist on the head node.") from None
    if entry.pw_uid == 0 or entry.pw_uid < settings.TERMINAL_MIN_UID:
        raise SystemAccountRefused(
            f"The POSIX user {username!r} has uid {entry.pw_uid}, below the minimum of {settings.TERMINAL_MIN_UID}: "
            "the portal never acts as a system account."
        )
    if entry.pw_uid != expected_uid:
        raise SystemAccountRefused(f"The POSIX user {username!r} has uid {entry.pw_uid} on the head node, but the mapping says {expected_uid}.")
    if need_login_shell and os.path.basename(entry.pw_shell or "") in _NO_LOGIN_SHELLS:
        raise PosixAccountError(f"The POSIX user {username!r} has no login shell ({entry.pw_shell}).")
    if _expired_on(username) is not None:
        raise AccountLocked(f"The POSIX user {username!r} is locked on the head node (its account has expired).")
    return entry


def become_user_argv(entry: pwd.struct_passwd) -> list[str]:
    """The argv prefix that runs a command as `entry`: nothing (ourselves), runuser (root) or sudo -n."""
    if os.geteuid() == entry.pw_uid:
        return []
    if os.geteuid() == 0:
        return ["runuser", "-u", entry.pw_name, "--"]
    return ["sudo", "-n", "-u", entry.pw_name, "--"]


def clean_environment(entry: pwd.struct_passwd, **extra: str) -> list[str]:
    """`NAME=value` items for `env -i`: the minimum a login-like process expects, nothing of ours."""
    shell = entry.pw_shell or "/bin/sh"
    base = {
        "LANG": settings.TERMINAL_LANG,
        "HOME": entry.pw_dir,
        "USER": entry.pw_name,
        "LOGNAME": entry.pw_name,
        "SHELL": shell,
        "PATH": settings.TERMINAL_PATH,
    }
    base.update(extra)
    return [f"{key}={value}" for key, value in base.items()]
