"""What the file browser runs on the head node: standard GNU tools, as the user's POSIX account.

Every operation is an argv list run through the cluster's executor (clusters/executors.py) as the
mapped user, so the head node's POSIX permissions decide what may be read or written. Nothing of ours
is installed there: realpath, find -printf, head -c, sha256sum, mktemp, cat, chmod, mv, ln, mkdir.
The few scripts are constants run as `sh -c SCRIPT sh ARG...`, every input a positional argument.

Paths are resolved on the head node with `realpath -e` (symbolic links followed, as the user) in the
same command that reads, and returned first, so that the caller (filebrowser/actions.py) can check
the real path against the allowed roots before it shows a byte or writes anything.

Over SSM the output comes back as text (GetCommandInvocation, or S3): a command whose output is bytes
(file contents, names in any encoding, NUL separators) is wrapped so that it travels base64-encoded.
"""

import base64
import binascii
import dataclasses
import stat
from dataclasses import dataclass
from datetime import UTC, datetime

from clusters.executors import CommandResult, CommandTooLarge, ExecutorError, SsmExecutor, executor_for
from clusters.streaming import StreamFailed

COMMAND_TIMEOUT = 30  # listing, reading a preview, mkdir: seconds

# One line per entry, NUL-terminated: type / type behind a link / size / mtime / mode / owner / name / link target.
# A name cannot hold "/" or NUL, so the first seven fields split on "/"; the link target is the rest.
ENTRY_FORMAT = r"%y/%Y/%s/%T@/%m/%u/%f/%l\0"

# $1 path, $2 most entries, then the allowed roots. Prints the real path, the roots' real paths, then entries.
LIST_SCRIPT = r"""p=$1 max=$2; shift 2
realpath -z -e -- "$p" || exit 3
realpath -z -m -- "$@" || exit 3
if [ ! -d "$p" ]; then echo "clusterra: not a directory" >&2; exit 4; fi
if [ ! -r "$p" ] || [ ! -x "$p" ]; then echo "clusterra: permission denied" >&2; exit 5; fi
find -H "$p" -mindepth 1 -maxdepth 1 -printf '""" + ENTRY_FORMAT + r"""' | head -z -n "$max"
"""

# $1 bytes to read (0: none), $2 path, then the roots. The real path, the roots, the entry, then the content.
INSPECT_SCRIPT = r"""n=$1 p=$2; shift 2
realpath -z -e -- "$p" || exit 3
realpath -z -m -- "$@" || exit 3
find -H "$p" -maxdepth 0 -printf '""" + ENTRY_FORMAT + r"""' || exit 3
if [ "$n" -gt 0 ] && [ -f "$p" ]; then exec head -c "$n" -- "$p"; fi
"""

# $1 directory (a real path), $2 name, $3 1 to replace an existing file. The data comes on stdin, is
# written to a temporary file beside the target and moved into place: a failed upload leaves nothing.
# `still` checks again, right before the temporary file is made and right before it takes its name,
# that the directory still resolves to the real path the portal checked (not swapped for a link since).
UPLOAD_SCRIPT = r"""d=$1 name=$2 replace=$3
still() { r=$(realpath -e -- "$d") && [ "$r" = "$d" ] || { echo "clusterra: directory changed" >&2; exit 16; }; }
still
t=$(mktemp -- "$d/.clusterra-upload.XXXXXX") || exit 11
trap 'rm -f -- "$t"' EXIT
cat > "$t" || exit 12
chmod "$(printf '%o' $(( 0666 & ~0$(umask) )))" -- "$t" || exit 13
still
if [ "$replace" = 1 ]; then
  mv -fT -- "$t" "$d/$name" || exit 14
else
  ln -T -- "$t" "$d/$name" || exit 15
fi
"""

# $1 file (a real path), $2 the sha256 it had when it was opened. The new content comes on stdin and is
# written only if the file still has that sha256 right before the write.
# - The user owns the file: replaced atomically (a temporary file in the same directory, then mv), with
#   the file's permission bits and, where the user may set it, its group.
# - Someone else owns it (a shared 0666 file, perhaps in a sticky 1777 directory where the user may not
#   replace it): a new file would change its owner, so the content is staged in a temporary file and then
#   written in place. Not atomic, but owner, group, ACLs and hard links stay.
SAVE_SCRIPT = r"""p=$1 want=$2
same() { h=$(sha256sum < "$p") || exit 20; [ "${h%% *}" = "$want" ]; }
if [ ! -f "$p" ] || [ ! -w "$p" ]; then echo "clusterra: not writable" >&2; exit 21; fi
same || { echo "clusterra: changed on disk" >&2; exit 22; }
if [ ! -O "$p" ]; then
  t=$(mktemp -t clusterra-edit.XXXXXX) || exit 17
  trap 'rm -f -- "$t"' EXIT
  cat > "$t" || exit 12
  same || { echo "clusterra: changed on disk" >&2; exit 22; }
  cat -- "$t" > "$p" || exit 18
  exit 0
fi
t=$(mktemp -- "$(dirname -- "$p")/.clusterra-edit.XXXXXX") || exit 11
trap 'rm -f -- "$t"' EXIT
cat > "$t" || exit 12
chmod --reference="$p" -- "$t" || exit 13
chgrp --reference="$p" -- "$t" 2>/dev/null || true
same || { echo "clusterra: changed on disk" >&2; exit 22; }
mv -fT -- "$t" "$p" || exit 14
"""

# SSM: run "$@" with its stdout base64-encoded, keeping its exit status (POSIX sh has no pipefail).
BASE64_OUTPUT = r"""exec 4>&1
rc=$( { { "$@"; echo $? >&3; } | base64 -w0 >&4; } 3>&1 )
exit "${rc:-1}"
"""

_TYPES = {"d": stat.S_IFDIR, "f": stat.S_IFREG, "l": stat.S_IFLNK, "p": stat.S_IFIFO, "s": stat.S_IFSOCK,
          "c": stat.S_IFCHR, "b": stat.S_IFBLK}


class RemoteError(Exception):
    """The head node (or the way there) refused or failed; the message is fit for the user."""

    def __init__(self, message: str, *, status: int = 502, code: int | None = None, stderr: str = ""):
        super().__init__(message)
        self.status, self.code, self.stderr = status, code, stderr


@dataclass(frozen=True)
class Entry:
    name: str  # for display (undecodable bytes replaced)
    kind: str  # find's %y: d f l p s c b
    target_kind: str  # for a symbolic link what it points to (%Y: d f …, N broken, L loop), else = kind
    size: int
    modified: datetime
    mode: int  # permission bits, with setuid/setgid/sticky
    owner: str
    link_target: str
    usable: bool  # the name is valid UTF-8 without control characters: the portal can act on it

    @property
    def is_dir(self) -> bool:
        return self.target_kind == "d"

    @property
    def is_file(self) -> bool:
        return self.target_kind == "f"

    @property
    def is_link(self) -> bool:
        return self.kind == "l"

    @property
    def permissions(self) -> str:
        return stat.filemode(_TYPES.get(self.kind, 0) | self.mode)


@dataclass(frozen=True)
class Resolved:
    path: str  # the real path (symbolic links followed), as the user sees it
    roots: list[str]  # the real paths of the allowed roots


@dataclass(frozen=True)
class Listing:
    resolved: Resolved
    entries: list[Entry]
    truncated: bool
    warnings: str  # find's complaints about single entries


@dataclass(frozen=True)
class Inspected:
    resolved: Resolved
    entry: Entry
    content: bytes | None


def has_control(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def usable_name(text: str) -> bool:
    return bool(text) and not has_control(text)


def is_ssm(account) -> bool:
    return isinstance(executor_for(account.cluster), SsmExecutor)


def run(account, argv: list[str], *, stdin=None, timeout: float = COMMAND_TIMEOUT, binary_output: bool = False) -> CommandResult:
    """Run argv as the user through the cluster's executor; RemoteError if it could not be run at all.

    `stdin` is bytes or, for the local executor only, a readable file fed in chunks (an upload).
    """
    executor = executor_for(account.cluster)
    encoded = binary_output and isinstance(executor, SsmExecutor)
    if encoded:
        argv = ["sh", "-c", BASE64_OUTPUT, "sh", *argv]
    try:
        result = executor.run(account, argv, stdin=stdin, timeout=timeout)
    except CommandTooLarge as exc:
        raise RemoteError(str(exc), status=413) from None
    except ExecutorError as exc:
        raise RemoteError(str(exc), status=504 if exc.retryable else 502) from None
    if encoded:
        try:
            result = dataclasses.replace(result, stdout=base64.b64decode(result.stdout.strip(), validate=True))
        except binascii.Error:
            raise RemoteError("The head node's answer could not be decoded (base64 expected).") from None
    return result


def _split(data: bytes, count: int) -> tuple[list[bytes], bytes]:
    """The first `count` NUL-terminated fields and the rest."""
    fields = []
    for _ in range(count):
        field, sep, data = data.partition(b"\0")
        if not sep:
            raise RemoteError("The head node's answer was cut short.")
        fields.append(field)
    return fields, data


def _resolved(fields: list[bytes]) -> Resolved:
    try:
        path, *roots = (f.decode("utf-8") for f in fields)
    except UnicodeDecodeError:
        raise RemoteError("The real path is not valid UTF-8; use the terminal for this one.", status=400) from None
    return Resolved(path, roots)


def parse_entry(record: bytes) -> Entry:
    parts = record.split(b"/", 7)
    if len(parts) != 8:
        raise RemoteError("The head node's listing could not be read.")
    kind, target_kind, size, mtime, mode, owner, raw_name, link = parts
    try:
        name = raw_name.decode("utf-8")
        usable = usable_name(name)
    except UnicodeDecodeError:
        name, usable = raw_name.decode("utf-8", "replace"), False
    return Entry(
        name=name, kind=kind.decode(), target_kind=target_kind.decode() if kind == b"l" else kind.decode(),
        size=int(size), modified=datetime.fromtimestamp(float(mtime), tz=UTC), mode=int(mode, 8),
        owner=owner.decode("utf-8", "replace"), link_target=link.decode("utf-8", "replace"), usable=usable,
    )


def _failed(result: CommandResult, account, path: str, doing: str) -> RemoteError:
    return failure(result.stderr.decode("utf-8", "replace").strip(), result.returncode, account, path, doing)


def failure(text: str, code: int | None, account, path: str, doing: str) -> RemoteError:
    """A command's complaint as a message naming the path; the status says why (404, 403, 409, 400, 507, 502)."""
    if "No such file or directory" in text:
        message, status = f"{path} does not exist.", 404
    elif "Permission denied" in text or "clusterra: permission denied" in text or "not writable" in text:
        message, status = (f"Permission denied: your POSIX account {account.posix_username} may not {doing} {path} "
                           "(the head node's file permissions decide)."), 403
    elif "File exists" in text or "cannot overwrite directory" in text:
        message, status = f"{path} already exists.", 409
    elif "clusterra: not a directory" in text or "Not a directory" in text:
        message, status = f"{path} is not a directory.", 400
    elif "clusterra: changed on disk" in text:
        message, status = f"{path} changed on disk since it was opened.", 409
    elif "Disk quota exceeded" in text or "No space left" in text:
        message, status = f"Could not write {path}: {text.splitlines()[-1]}", 507
    else:
        message, status = f"The head node refused ({text.splitlines()[-1] if text else f'exit status {code}'}).", 502
    return RemoteError(message, status=status, code=code, stderr=text)


def list_directory(account, path: str, roots: list[str], *, max_entries: int) -> Listing:
    result = run(account, ["sh", "-c", LIST_SCRIPT, "sh", path, str(max_entries + 1), *roots], binary_output=True)
    if not result.ok:
        raise _failed(result, account, path, "list")
    fields, rest = _split(result.stdout, 1 + len(roots))
    records = [r for r in rest.split(b"\0") if r]
    entries = [parse_entry(r) for r in records[:max_entries]]
    entries.sort(key=lambda e: (not e.is_dir, e.name.casefold(), e.name))
    return Listing(_resolved(fields), entries, len(records) > max_entries, result.stderr.decode("utf-8", "replace").strip())


def inspect(account, path: str, roots: list[str], *, read_bytes: int = 0, timeout: float = COMMAND_TIMEOUT) -> Inspected:
    """The file's real path, its entry and (read_bytes > 0, a regular file) its first read_bytes bytes."""
    result = run(account, ["sh", "-c", INSPECT_SCRIPT, "sh", str(read_bytes), path, *roots], binary_output=True, timeout=timeout)
    if not result.ok:
        raise _failed(result, account, path, "read")
    fields, rest = _split(result.stdout, 2 + len(roots))
    entry = parse_entry(fields[-1])
    return Inspected(_resolved(fields[:-1]), entry, rest if read_bytes > 0 and entry.is_file else None)


def make_directory(account, path: str) -> None:
    result = run(account, ["mkdir", "--", path])
    if not result.ok:
        raise _failed(result, account, path, "create")


def write_new(account, directory: str, name: str, data, *, replace: bool, timeout: float) -> None:
    """Write `data` (bytes, or a readable file for the local executor) as directory/name."""
    path = f"{directory.rstrip('/')}/{name}"
    result = run(account, ["sh", "-c", UPLOAD_SCRIPT, "sh", directory, name, "1" if replace else "0"], stdin=data, timeout=timeout)
    if result.returncode == 16:
        raise RemoteError(f"{directory} was moved or replaced (by a symbolic link, perhaps) while the file was being "
                          "uploaded; nothing was written. Open the directory again and retry.", status=409, code=16)
    if not result.ok:
        raise _failed(result, account, path, "create")


def replace_if_unchanged(account, path: str, sha256: str, data: bytes, *, timeout: float) -> None:
    result = run(account, ["sh", "-c", SAVE_SCRIPT, "sh", path, sha256], stdin=data, timeout=timeout)
    if result.returncode == 11:  # mktemp: the directory is not writable, though the file may be
        raise RemoteError(f"Could not save {path}: your POSIX account {account.posix_username} may not create files in "
                          "its directory (the file is replaced through a temporary file beside it).", status=403, code=11)
    if result.returncode == 14 and b"Operation not permitted" in result.stderr:  # e.g. a sticky directory
        raise RemoteError(f"Could not save {path}: your POSIX account {account.posix_username} may not replace it in its "
                          "directory (in a sticky directory such as /tmp only a file's owner may). Nothing was changed.",
                          status=403, code=14)
    if not result.ok:
        raise _failed(result, account, path, "write")


def open_stream(account, path: str, size: int, *, timeout: float):
    """The local executor only: `head -c size` of the file as the user, as an OutputStream whose first
    chunk has been read (a failure to open the file raises RemoteError before any byte is sent)."""
    try:
        stream = executor_for(account.cluster).stream(account, ["head", "-c", str(size), "--", path], timeout=timeout,
                                                      idle_timeout=COMMAND_TIMEOUT)
    except ExecutorError as exc:
        raise RemoteError(str(exc)) from None
    try:
        stream.first_chunk()
    except StreamFailed as exc:
        raise failure(str(exc), stream.returncode, account, path, "read") from None
    return stream
