"""Start-up checks: fail fast with a clear message instead of a broken terminal later."""

import os
import shutil

from django.conf import settings
from django.core.checks import Error, Warning, register


@register()
def terminal_checks(app_configs, **kwargs):
    problems = []
    xterm = settings.BASE_DIR / "node_modules" / "@xterm" / "xterm" / "lib" / "xterm.mjs"
    if not xterm.exists():
        problems.append(Error("xterm.js is not installed.", hint="Run `npm ci` in the project directory (make demo does).", id="terminal.E001"))
    if settings.RECORDINGS_STORE == "filesystem":
        problems += _writable_dir("CLUSTERRA_RECORDINGS_DIR", settings.RECORDINGS_DIR, "terminal.E002", "terminal.E003")
    problems += _writable_dir("CLUSTERRA_RECORDINGS_SPOOL_DIR", settings.RECORDINGS_SPOOL_DIR, "terminal.E006", "terminal.E007")
    if shutil.which("setsid") is None:
        problems.append(Error("`setsid` (util-linux) is needed by the local terminal backend.", id="terminal.E004"))
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        problems.append(Error("`runuser` (util-linux) is needed to open shells as other users.", id="terminal.E005"))
    if os.geteuid() != 0 and shutil.which("sudo") is None:
        problems.append(Warning(
            "Not running as root and `sudo` is missing: local terminals only work for the portal's own POSIX user.",
            id="terminal.W001"))
    return problems


def _writable_dir(name: str, path, missing_id: str, unwritable_id: str) -> list:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        return [Error(f"{name}={path} cannot be created: {exc.strerror}", id=missing_id)]
    if not os.access(path, os.W_OK | os.X_OK):
        return [Error(f"{name}={path} is not writable.", id=unwritable_id)]
    return []
