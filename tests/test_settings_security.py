"""Settings that protect a deployment: private data files, and the documented production configuration
passing `manage.py check --deploy` (each in a subprocess with its own environment, as at start-up)."""

import os
import stat
import subprocess
import sys

from tests.conftest import BASE_DIR


def _clean_env(**overrides: str) -> dict[str, str]:
    """The environment of a fresh start: none of the test run's CLUSTERRA_* variables."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLUSTERRA_")}
    return {**env, "DJANGO_SETTINGS_MODULE": "clusterra.settings", **overrides}


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# Runs in the child: migrate (Django creates the SQLite file, if nothing did before), then, with a
# connection still open in WAL mode, report the modes of everything under the data directory.
_REPORT_MODES = """
import json, os, stat, sys
import django
django.setup()
from django.conf import settings
from django.core.management import call_command
from django.db import connection
call_command("migrate", verbosity=0)
with connection.cursor() as cursor:
    cursor.execute("PRAGMA journal_mode")
    journal = cursor.fetchone()[0]
    cursor.execute("UPDATE django_migrations SET applied = applied WHERE id = 1")
    modes = {}
    for root, dirs, files in os.walk(settings.DATA_DIR):
        for name in dirs + files:
            path = os.path.join(root, name)
            modes[os.path.relpath(path, settings.DATA_DIR)] = oct(stat.S_IMODE(os.stat(path).st_mode))
json.dump({"journal": journal, "modes": modes}, sys.stdout)
"""


def test_the_embedded_default_keeps_its_data_private(tmp_path):
    """Under the usual umask 022: data directory (and the parents it creates) 0700, database, its WAL
    files and the generated secret key 0600, recordings 0700."""
    import json

    data = tmp_path / "missing-parent" / "data"
    result = subprocess.run([sys.executable, "-c", _REPORT_MODES], cwd=BASE_DIR, env=_clean_env(CLUSTERRA_DATA_DIR=str(data)),
                            capture_output=True, text=True, timeout=300, umask=0o022)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    modes = report["modes"]
    assert report["journal"] == "wal"
    assert _mode(data.parent) == 0o700 and _mode(data) == 0o700
    assert modes["clusterra.sqlite3"] == "0o600"
    assert modes["clusterra.sqlite3-wal"] == "0o600" and modes["clusterra.sqlite3-shm"] == "0o600"
    assert modes["secret_key"] == "0o600"
    assert modes["recordings"] == "0o700"
    assert len((data / "secret_key").read_text().strip()) >= 50

    # A second start keeps the key, and a database URL elsewhere gets the same treatment.
    elsewhere = tmp_path / "db" / "portal.sqlite3"
    again = subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); from django.conf import settings; print(settings.SECRET_KEY)"],
        cwd=BASE_DIR, env=_clean_env(CLUSTERRA_DATA_DIR=str(data), CLUSTERRA_DATABASE_URL=f"sqlite:///{elsewhere}"),
        capture_output=True, text=True, timeout=120, umask=0o022,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.strip() == (data / "secret_key").read_text().strip()
    assert _mode(elsewhere.parent) == 0o700 and _mode(elsewhere) == 0o600
