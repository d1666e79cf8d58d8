"""The file browser's one way in: every read and write of a user's files, validated at the edge, run as
the user's POSIX account (filebrowser/remote.py), and audited.

The views (filebrowser/views.py) call only these. Reading a file's content (view, download) and every
write (upload, new directory, edit) records an audit event (`file.view`, `file.download`, `file.upload`,
`file.mkdir`, `file.edit`); listing a directory does not. Each refusal is a FileActionError whose
message says what was wrong, and nothing has been written when one is raised.
"""

import hashlib
import re
from dataclasses import dataclass

from django.conf import settings
from django.template.defaultfilters import filesizeformat

from audit.services import record_event
from clusters import aws
from clusters.executors import MAX_OUTPUT_BYTES, SSM_PARAMETERS_MAX_BYTES
from clusters.models import ClusterAccount
from filebrowser import remote
from jobs import validation
from jobs.actions import allowed_roots

MAX_LIST_ENTRIES = 5000
MAX_NAME_BYTES = 255  # NAME_MAX of Linux file systems
# An upload's request is the file plus the rest of the multipart form (boundaries, CSRF token, the path):
# a request longer than the limit plus this is refused before its body is read. deploy/nginx-site.sh adds
# the same headroom to nginx's client_max_body_size.
UPLOAD_FORM_HEADROOM = 1024 * 1024
# SSM: an upload or a saved edit travels base64-encoded inside SendCommand's parameters (at most
# SSM_PARAMETERS_MAX_BYTES), beside the script that runs it: 3/4 of what is left after 8 KiB for that.
SSM_MAX_INPUT_BYTES = (SSM_PARAMETERS_MAX_BYTES - 8 * 1024) * 3 // 4
# SSM: content comes back base64-encoded in GetCommandInvocation (24,000 characters) or, with an
# output bucket configured for the cluster, from S3 (the executor reads at most MAX_OUTPUT_BYTES).
SSM_INLINE_OUTPUT_BYTES = 16 * 1024
SSM_S3_OUTPUT_BYTES = MAX_OUTPUT_BYTES * 3 // 4 - 64 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class FileActionError(Exception):
    """A refusal or failure, fit for the user; `status` is the HTTP status the page answers with."""

    def __init__(self, message: str, *, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    upload: int
    preview: int
    edit: int
    download: int | None  # None: streamed, no limit
    note: str  # why they are smaller than the settings (SSM), for the page


def limits(account: ClusterAccount) -> Limits:
    upload, preview, edit = settings.FILES_MAX_UPLOAD_BYTES, settings.FILES_MAX_PREVIEW_BYTES, settings.FILES_MAX_EDIT_BYTES
    if not remote.is_ssm(account):
        return Limits(upload, preview, edit, None, "")
    try:
        has_bucket = bool(aws.ssm_settings(account.cluster).s3_bucket)
    except aws.AwsError:
        has_bucket = False
    output = SSM_S3_OUTPUT_BYTES if has_bucket else SSM_INLINE_OUTPUT_BYTES
    note = (f"This cluster is reached through AWS SSM: an upload or a saved edit travels inside the SendCommand request, so "
            f"it can be at most {_size(SSM_MAX_INPUT_BYTES)}, and files come back through "
            + ("the cluster's S3 output bucket" if has_bucket else "SSM's command output (no S3 output bucket is configured)")
            + f", so a download can be at most {_size(output)}, read whole before it is sent. "
            "Use the terminal (scp, aws s3 cp) for larger files.")
    return Limits(min(upload, SSM_MAX_INPUT_BYTES), min(preview, output), min(edit, output, SSM_MAX_INPUT_BYTES), output, note)


def _size(n: int) -> str:
    return f"{filesizeformat(n)} ({n:,} bytes)"


# --- validation at the edge -----------------------------------------------------------------------
def _active(account: ClusterAccount | None) -> ClusterAccount:
    if account is None or account.state != ClusterAccount.State.ACTIVE:
        raise FileActionError("You have no active account on this cluster.", status=403)
    return account


def clean_path(account: ClusterAccount, raw: str | None) -> str:
    """An absolute, normalised path inside the allowed roots, without control characters (as job paths)."""
    if raw and remote.has_control(raw):
        raise FileActionError("The path contains a control character (such as a tab or a newline); "
                              "such names are not handled here. Use the terminal for them.")
    try:
        return validation.clean_path("path", raw, allowed_roots(account))
    except validation.JobRequestError as exc:
        raise FileActionError(f"The path {exc.message}") from None


def clean_name(raw: str | None) -> str:
    """One file or directory name: not empty, no '/', not '.' or '..', no control characters, ≤ 255 bytes."""
    name = (raw or "").strip()
    if not name:
        raise FileActionError("Give a name.")
    if remote.has_control(name):
        raise FileActionError("A name must not contain control characters (such as a tab or a newline).")
    if "/" in name or name in (".", ".."):
        raise FileActionError(f"{name!r} is not a name: no '/', and not '.' or '..'.")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise FileActionError(f"A name may be at most {MAX_NAME_BYTES} bytes long.")
    return name


def _checked(account: ClusterAccount, requested: str, resolved: remote.Resolved) -> str:
    """The real path, if it is still inside the allowed roots (a symbolic link may lead out of them)."""
    configured = allowed_roots(account)
    if not remote.usable_name(resolved.path):
        raise FileActionError(f"{requested} leads to a path with control characters; use the terminal for it.")
    try:
        validation.clean_path("path", resolved.path, [*configured, *resolved.roots])
    except validation.JobRequestError:
        raise FileActionError(f"{requested} leads to {resolved.path} through a symbolic link, outside "
                              f"{' and '.join(configured)}: refused.", status=403) from None
    return resolved.path


def _remote(call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except remote.RemoteError as exc:
        raise FileActionError(str(exc), status=exc.status) from None


def _audit(action: str, account: ClusterAccount, *, actor, client_address, **data):
    record_event(action, tenant=account.cluster.tenant, actor=actor, target=account, client_address=client_address,
                 data={"cluster": account.cluster.slug, "posix_user": account.posix_username, **data})


# --- reading --------------------------------------------------------------------------------------
def browse(account: ClusterAccount, raw_path: str | None) -> remote.Listing:
    account = _active(account)
    path = clean_path(account, raw_path or allowed_roots(account)[0])
    listing = _remote(remote.list_directory, account, path, allowed_roots(account), max_entries=MAX_LIST_ENTRIES)
    _checked(account, path, listing.resolved)
    return listing


@dataclass(frozen=True)
class Preview:
    path: str  # the real path
    entry: remote.Entry
    text: str | None  # None: binary (or a directory)
    truncated: bool
    limit: int


def _text(content: bytes) -> str | None:
    """UTF-8 text, or None for binary content (a NUL byte, or not UTF-8)."""
    if b"\0" in content:
        return None
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _text_cut(content: bytes) -> str | None:
    """Text cut at the preview limit: the cut may have split a UTF-8 character (up to 4 bytes), so drop
    1–3 bytes at the end until the rest decodes. An invalid byte anywhere else still means binary."""
    for drop in range(1, 4):
        text = _text(content[:-drop])
        if text is not None:
            return text
    return None


def preview(account: ClusterAccount, raw_path: str | None, *, actor, client_address=None) -> Preview:
    account = _active(account)
    path = clean_path(account, raw_path)
    limit = limits(account).preview
    inspected = _remote(remote.inspect, account, path, allowed_roots(account), read_bytes=limit + 1)
    real = _checked(account, path, inspected.resolved)
    if inspected.content is None:
        return Preview(real, inspected.entry, None, False, limit)
    content = inspected.content[:limit]
    truncated = len(inspected.content) > limit
    text = _text(content)
    if text is None and truncated:
        text = _text_cut(content)
    _audit("file.view", account, actor=actor, client_address=client_address, path=real, bytes=len(content))
    return Preview(real, inspected.entry, text, truncated, limit)


@dataclass
class Download:
    path: str
    size: int
    stream: object | None  # clusters.streaming.OutputStream (local executor)
    content: bytes | None  # SSM: read whole


def download(account: ClusterAccount, raw_path: str | None, *, actor, client_address=None) -> Download:
    account = _active(account)
    path = clean_path(account, raw_path)
    inspected = _remote(remote.inspect, account, path, allowed_roots(account))
    real = _checked(account, path, inspected.resolved)
    if not inspected.entry.is_file:
        raise FileActionError(f"{path} is not a regular file; only files can be downloaded.")
    size = inspected.entry.size
    limit = limits(account)
    if limit.download is None:
        stream = _remote(remote.open_stream, account, real, size, timeout=settings.FILES_TRANSFER_TIMEOUT)
        result = Download(real, size, stream, None)
    else:
        if size > limit.download:
            raise FileActionError(f"{path} is {_size(size)}, too large to download here. {limit.note}", status=413)
        again = _remote(remote.inspect, account, real, allowed_roots(account), read_bytes=max(size, 1),
                        timeout=settings.FILES_TRANSFER_TIMEOUT)
        result = Download(real, len(again.content or b""), None, again.content or b"")
    _audit("file.download", account, actor=actor, client_address=client_address, path=real, bytes=result.size)
    return result


# --- writing --------------------------------------------------------------------------------------
def _directory(account: ClusterAccount, raw_dir: str | None) -> str:
    path = clean_path(account, raw_dir)
    inspected = _remote(remote.inspect, account, path, allowed_roots(account))
    real = _checked(account, path, inspected.resolved)
    if not inspected.entry.is_dir:
        raise FileActionError(f"{path} is not a directory.")
    return real


def upload(account: ClusterAccount, raw_dir: str | None, uploaded, *, replace: bool, actor, client_address=None) -> str:
    """Write an uploaded file (Django's UploadedFile) into the directory; the file's path."""
    account = _active(account)
    name = clean_name(uploaded.name)
    limit = limits(account)
    if uploaded.size > limit.upload:
        raise FileActionError(upload_too_large(uploaded.size, limit), status=413)
    directory = _directory(account, raw_dir)
    uploaded.seek(0)
    # Local: fed from Django's (temporary) upload file in chunks. SSM: it has to travel inside SendCommand.
    data = uploaded.read() if remote.is_ssm(account) else uploaded
    _remote(remote.write_new, account, directory, name, data, replace=replace, timeout=settings.FILES_TRANSFER_TIMEOUT)
    path = f"{directory.rstrip('/')}/{name}"
    _audit("file.upload", account, actor=actor, client_address=client_address, path=path, bytes=uploaded.size, replace=replace)
    return path


def upload_too_large(size: int | None, limit: Limits) -> str:
    what = f"The file is {_size(size)}" if size is not None else "The file is too large"
    return f"{what}; uploads are limited to {_size(limit.upload)}{_why(limit, 'CLUSTERRA_FILES_MAX_UPLOAD_BYTES')} Nothing was written."


def _why(limit: Limits, setting: str) -> str:
    """Where a limit comes from: SSM's own bounds, or the portal's setting."""
    return f". {limit.note}" if limit.note else f" (the portal's setting {setting})."


def make_directory(account: ClusterAccount, raw_dir: str | None, raw_name: str | None, *, actor, client_address=None) -> str:
    account = _active(account)
    name = clean_name(raw_name)
    directory = _directory(account, raw_dir)
    path = f"{directory.rstrip('/')}/{name}"
    _remote(remote.make_directory, account, path)
    _audit("file.mkdir", account, actor=actor, client_address=client_address, path=path)
    return path


@dataclass(frozen=True)
class EditState:
    path: str  # as asked for (the form posts it back)
    real_path: str
    text: str
    sha256: str  # of the bytes on disk when opened: the "changed on disk" check at save
    crlf: bool  # the file used CRLF line endings (kept on save)


def open_for_edit(account: ClusterAccount, raw_path: str | None, *, actor, client_address=None) -> EditState:
    """The file's text for the edit form; showing it is a read, so it is audited as `file.view`."""
    account = _active(account)
    path = clean_path(account, raw_path)
    limit = limits(account)
    inspected = _remote(remote.inspect, account, path, allowed_roots(account), read_bytes=limit.edit + 1)
    real = _checked(account, path, inspected.resolved)
    if inspected.content is None:
        raise FileActionError(f"{path} is not a regular file; only files can be edited.")
    if len(inspected.content) > limit.edit:
        raise FileActionError(f"{path} is {_size(inspected.entry.size)}; files up to {_size(limit.edit)} can be edited here"
                              f"{_why(limit, 'CLUSTERRA_FILES_MAX_EDIT_BYTES')} Download it or use the terminal.", status=413)
    text = _text(inspected.content)
    if text is None:
        raise FileActionError(f"{path} is a binary file (not UTF-8 text); it cannot be edited here. Download it instead.",
                              status=415)
    _audit("file.view", account, actor=actor, client_address=client_address, path=real, bytes=len(inspected.content))
    return EditState(path, real, text, hashlib.sha256(inspected.content).hexdigest(), b"\r\n" in inspected.content)


def save_edit(account: ClusterAccount, raw_path: str | None, text: str, sha256: str, *, crlf: bool, actor,
              client_address=None) -> str:
    """Replace the file with `text` if it still has the `sha256` it had when opened; the real path."""
    account = _active(account)
    path = clean_path(account, raw_path)
    if not _SHA256.match(sha256 or ""):
        raise FileActionError("The form lost track of the file's version; open the file for editing again.")
    if "\0" in text:
        raise FileActionError("The text contains a NUL character; binary content cannot be saved here.", status=415)
    # Browsers send a textarea's line breaks as CRLF: back to the file's own line endings.
    text = text.replace("\r\n", "\n")
    data = (text.replace("\n", "\r\n") if crlf else text).encode("utf-8")
    limit = limits(account)
    if len(data) > limit.edit:
        raise FileActionError(f"The text is {_size(len(data))}; files up to {_size(limit.edit)} can be saved here"
                              f"{_why(limit, 'CLUSTERRA_FILES_MAX_EDIT_BYTES')} Nothing was changed.", status=413)
    inspected = _remote(remote.inspect, account, path, allowed_roots(account))
    real = _checked(account, path, inspected.resolved)
    if not inspected.entry.is_file:
        raise FileActionError(f"{path} is not a regular file any more. Nothing was changed.", status=409)
    try:
        remote.replace_if_unchanged(account, real, sha256, data, timeout=settings.FILES_TRANSFER_TIMEOUT)
    except remote.RemoteError as exc:
        if exc.code == 22:
            raise FileActionError(f"{path} was changed on disk since you opened it (by another program or another window). "
                                  "Nothing was changed: copy your text, reload the file and apply your change again.",
                                  status=409) from None
        raise FileActionError(str(exc), status=exc.status) from None
    _audit("file.edit", account, actor=actor, client_address=client_address, path=real, bytes=len(data),
           sha256_before=sha256, sha256_after=hashlib.sha256(data).hexdigest())
    return real
