"""Files and directories that only the portal's own user may read: the data directory, the SQLite
database, the generated secret key, recordings.

The modes are given at creation (never a umask: the shells the portal starts for users inherit it).
Existing paths keep the mode they have; docs/configuration.md says how to tighten an older data directory.
"""

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def private_dir(path: Path) -> Path:
    """Create `path` and whatever of its parents is missing, each 0700."""
    missing = []
    current = path
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:  # another process starting at the same time
            pass
    return path


def private_file(path: Path) -> None:
    """Create an empty file 0600 unless `path` exists, so a program that opens it later (SQLite, which
    gives its -wal and -shm files the database file's mode) finds it private."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def read_or_create_secret(path: Path, make: Callable[[], str]) -> str:
    """The secret kept in `path`, or a new one from `make()` written there 0600.

    Written to a temporary file (mkstemp: 0600) and linked into place, so processes starting together
    all end up with the one that was linked first and never read a half-written file.
    """
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(make())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(temporary)
    return path.read_text().strip()
