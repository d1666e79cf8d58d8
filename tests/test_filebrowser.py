"""The file browser (filebrowser/): every operation runs as the mapped POSIX user through the real
local executor (runuser), or through the SSM executor against the SendCommand stand-in of
tests/test_provisioning.py (the very script SendCommand carries runs here as root, then runuser).

The user is the tests' POSIX user (clusterra-t1, when run as root); clusterra-t2 owns the "other
user's" files. Each test works in a fresh directory in the user's home and a fresh shared root.
"""

import asyncio
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace

import botocore.session
import pytest
from asgiref.sync import sync_to_async
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connections
from django.test import Client

from audit.models import AuditEvent
from clusters import aws
from clusters.executors import LocalExecutor
from clusters.models import ClusterAccount
from clusters.streaming import StreamFailed
from filebrowser import actions, remote
from tests.conftest import _ensure_posix_user
from tests.test_provisioning import INSTANCE, REGION, ROLE, RunCommandPeer

pytestmark = pytest.mark.django_db

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: files of a second POSIX user, and runuser")


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _own(path: Path, entry: pwd.struct_passwd, mode: int) -> Path:
    os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    if not path.is_symlink():
        os.chmod(path, mode)
    return path


class Files:
    """The user's work directory (in their home) and a shared root, with helpers to make files as a given user."""

    def __init__(self, cast):
        self.cast, self.user = cast, cast.posix
        self.work = Path(self.user.pw_dir) / f"fb-test-{uuid.uuid4().hex[:8]}"
        self.work.mkdir()
        _own(self.work, self.user, 0o755)
        self.shared = Path(f"/tmp/clusterra-fb-shared-{uuid.uuid4().hex[:8]}")
        self.shared.mkdir()
        os.chmod(self.shared, 0o755)  # noqa: S103 (root's: the user may list it but not write in it)
        cast.hpc.shared_roots = [str(self.shared)]
        cast.hpc.save()
        self.account = ClusterAccount.objects.select_related("cluster__tenant").get(cluster=cast.hpc, user=cast.bob)

    def file(self, relative: str, data: bytes | str, *, mode: int = 0o644, owner=None, base: Path | None = None) -> Path:
        path = (base or self.work) / relative
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return _own(path, owner or self.user, mode)

    def cleanup(self):
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.rmtree(self.shared, ignore_errors=True)


@pytest.fixture
def files(cast):
    f = Files(cast)
    yield f
    f.cleanup()


@pytest.fixture
def bob(client, files):
    client.force_login(files.cast.bob)
    return client


URL = "/t/acme/c/hpc/files/"


def _page(response) -> str:
    return response.content.decode()


def _events(action: str):
    return list(AuditEvent.objects.filter(action=action).order_by("pk"))


# --- browsing -------------------------------------------------------------------------------------
def test_lists_a_directory_as_the_user_with_types_sizes_times_and_links(bob, files, settings, django_assert_max_num_queries):
    settings.TIME_ZONE = "Asia/Kolkata"  # the viewer's time zone: UTC+05:30
    (files.work / "sub").mkdir()
    _own(files.work / "sub", files.user, 0o750)
    files.file("run.sh", "#!/bin/bash\necho hi\n", mode=0o755)
    big = files.file("data.bin", b"\0" * 3000, mode=0o600)
    os.utime(big, (1767323040, 1767323040))  # 2026-01-02 03:04 UTC
    os.symlink("sub", files.work / "to-sub")
    _own(files.work / "to-sub", files.user, 0)
    with django_assert_max_num_queries(5):  # session, user, cluster, account, navigation: none per entry
        response = bob.get(URL, {"path": str(files.work)})
    page = _page(response)
    assert response.status_code == 200, page
    assert 'class="stack fb-table"' in page and 'data-label="Modified"' in page
    # directories first, then by name; a symbolic link marked with its target
    assert page.index(">sub/<") < page.index(">data.bin<") < page.index(">run.sh<")
    assert "to-sub/" in page and "→ sub" in page
    assert "drwxr-x---" in page and "-rwxr-xr-x" in page and "-rw-------" in page
    assert "2.9\xa0KB" in page  # filesizeformat
    assert "2026-01-02 08:34" in page  # 03:04 UTC in Kolkata
    assert "/t/acme/c/hpc/terminal/?cwd=" + str(files.work).replace("/", "%2F") in page
    assert "/t/acme/c/hpc/jobs/submit/?script_path=" + str(files.work / "run.sh").replace("/", "%2F") in page
    # the home directory is the default, and the shared root is offered
    home = _page(bob.get(URL))
    assert files.work.name in home and str(files.shared) in home


def test_only_the_users_own_active_account_may_browse(client, files):
    client.force_login(files.cast.charlie)  # another tenant: its own cluster is also called hpc
    assert client.get(URL).status_code == 404
    client.force_login(files.cast.rita)  # revoked account on this cluster
    response = client.get(URL)
    assert response.status_code == 403 and "no active account" in _page(response)
    client.logout()
    assert client.get(URL).status_code == 302


@pytest.mark.parametrize("path, message", [
    ("/etc", "must be inside"),
    ("relative/path", "must be an absolute path"),
    ("{work}/../x", "must be a normalised path"),
    ("{work}/a\tb", "control character"),
    ("{work}/line\nbreak", "control character"),
])
def test_bad_paths_are_refused_with_a_clear_message(bob, files, path, message):
    response = bob.get(URL, {"path": path.format(work=files.work)})
    assert response.status_code == 400 and message in _page(response)


def test_symbolic_links_leading_out_of_the_roots_are_refused(bob, files):
    os.symlink("/etc", files.work / "escape")
    os.symlink("/etc/passwd", files.work / "pw")
    inside = files.file("inside.txt", "fine\n")
    os.symlink(inside, files.work / "ok-link")
    for view in ("", "view/", "download/", "edit/"):
        response = bob.get(URL + view, {"path": str(files.work / ("escape" if view == "" else "pw"))})
        page = _page(response)
        assert response.status_code == 403 and "through a symbolic link, outside" in page, (view, page)
        assert "root:x:0:0" not in page
    assert "fine" in _page(bob.get(URL + "view/", {"path": str(files.work / "ok-link")}))
    # writing through a link to a directory outside: refused, nothing written
    response = bob.post(URL + "mkdir/", {"path": str(files.work / "escape"), "name": "nope"})
    assert response.status_code == 403 and not Path("/etc/nope").exists()


@needs_root
def test_a_file_of_another_user_with_mode_0600_is_refused(bob, files):
    other = _ensure_posix_user("clusterra-t2")
    secret = files.file("theirs.txt", "their secret\n", mode=0o600, owner=other, base=files.shared)
    listing = _page(bob.get(URL, {"path": str(files.shared)}))
    assert "theirs.txt" in listing and "clusterra-t2" in listing  # the directory is readable: the file is listed
    for view in ("view/", "download/", "edit/"):
        response = bob.get(URL + view, {"path": str(secret)})
        page = _page(response)
        assert response.status_code == 403, (view, page)
        assert f"Permission denied: your POSIX account {files.user.pw_name} may not read {secret}" in page
        assert "their secret" not in page
    assert not _events("file.view") and not _events("file.download")


@needs_root
def test_a_directory_the_user_cannot_enter_is_refused(bob, files):
    other = _ensure_posix_user("clusterra-t2")
    closed = files.shared / "closed"
    closed.mkdir()
    _own(closed, other, 0o700)
    response = bob.get(URL, {"path": str(closed)})
    assert response.status_code == 403 and "may not list" in _page(response)
    response = bob.get(URL, {"path": str(files.work / "missing")})
    assert response.status_code == 404 and "does not exist" in _page(response)


# --- viewing and downloading ----------------------------------------------------------------------
def test_view_shows_text_and_is_audited(bob, files, settings):
    settings.FILES_MAX_PREVIEW_BYTES = 1024
    small = files.file("notes.txt", "hello <world>\n")
    page = _page(bob.get(URL + "view/", {"path": str(small)}))
    assert "hello &lt;world&gt;" in page and "Submit this script" in page
    [event] = _events("file.view")
    assert event.data == {"cluster": "hpc", "posix_user": files.user.pw_name, "path": str(small), "bytes": 14}
    assert event.actor == files.cast.bob and event.target_id == str(files.account.pk)
    long = files.file("long.txt", "é" * 2000)  # 4000 bytes: cut at 1024, in the middle of no character
    page = _page(bob.get(URL + "view/", {"path": str(long)}))
    assert "é" * 512 in page and "Only the first 1.0\xa0KB are shown" in page
    binary = files.file("blob", b"\x00\x01\x02")
    assert "binary file" in _page(bob.get(URL + "view/", {"path": str(binary)}))
    # a directory given to the view goes to the listing
    assert bob.get(URL + "view/", {"path": str(files.work)})["Location"].startswith(URL + "?path=")


def test_a_cjk_preview_cut_inside_a_character_is_still_text(bob, files, settings):
    limit = settings.FILES_MAX_PREVIEW_BYTES  # the default, 256 KiB: not a multiple of 3
    assert limit % 3 != 0
    cjk = files.file("cjk.txt", "漢字" * (limit // 3))  # 3 bytes a character, twice the limit in all
    page = _page(bob.get(URL + "view/", {"path": str(cjk)}))
    assert "binary file" not in page and "Only the first" in page
    shown = limit // 3  # whole characters within the limit
    assert ("漢字" * (shown // 2)) in page and ("漢字" * (shown // 2 + 1)) not in page
    # an invalid byte before the cut still means binary: only the cut itself is forgiven
    broken = files.file("broken.txt", b"\xff" + "漢".encode() * limit)
    assert "binary file" in _page(bob.get(URL + "view/", {"path": str(broken)}))


def test_download_is_streamed_from_the_users_process(bob, files):
    data = os.urandom(300 * 1024) + b"\0end"
    target = files.file("out put.bin", data)
    response = bob.get(URL + "download/", {"path": str(target)})
    assert response.status_code == 200 and response.streaming
    assert response["Content-Length"] == str(len(data))
    assert response["Content-Disposition"] == "attachment; filename*=UTF-8''out%20put.bin"
    assert b"".join(response.streaming_content) == data
    [event] = _events("file.download")
    assert event.data["path"] == str(target) and event.data["bytes"] == len(data)
    response = bob.get(URL + "download/", {"path": str(files.work)})
    assert response.status_code == 400 and "only files can be downloaded" in _page(response)
    empty = files.file("empty", b"")
    response = bob.get(URL + "download/", {"path": str(empty)})
    assert response["Content-Length"] == "0" and b"".join(response.streaming_content) == b""


@pytest.mark.django_db(transaction=True)
async def test_download_under_asgi_is_read_from_the_pipe_on_the_event_loop(files, async_client):
    """Django reads a synchronous iterator whole before sending it under ASGI: the view hands it an async one."""
    data = os.urandom(2 * 1024 * 1024)
    target = files.file("big.bin", data)
    await async_client.aforce_login(files.cast.bob)
    response = await async_client.get(URL + "download/", {"path": str(target)})
    assert response.status_code == 200 and response.is_async
    chunks = [chunk async for chunk in response.streaming_content]
    assert len(chunks) > 1 and b"".join(chunks) == data
    await sync_to_async(connections.close_all)()  # the view's thread's connection, or the test database stays in use


def test_output_stream_times_out_and_is_killed_when_closed(files):
    executor = LocalExecutor()
    with pytest.raises(StreamFailed, match="^The head node sent nothing for 1 second; the transfer was stopped.$"):
        stream = executor.stream(files.account, ["sh", "-c", "sleep 30"], timeout=10, idle_timeout=1)
        stream.first_chunk()
    assert stream.returncode is not None  # killed and reaped
    with pytest.raises(StreamFailed, match="^The transfer did not finish within 1 second and was stopped.$"):
        stream = executor.stream(files.account, ["sh", "-c", "sleep 30"], timeout=1, idle_timeout=5)
        stream.first_chunk()
    stream = executor.stream(files.account, ["cat", "/dev/zero"], timeout=10, idle_timeout=5)
    assert stream.first_chunk()
    pid = stream.pid
    chunks = iter(stream.chunks())
    next(chunks)
    chunks.close()  # the browser went away
    assert stream.returncode == -9 and not Path(f"/proc/{pid}").exists()
    stream = executor.stream(files.account, ["cat", "/dev/zero"], timeout=10, idle_timeout=5)
    stream.first_chunk()
    stream.chunks().close()  # Django closes the response without reading it (a HEAD request)
    assert stream.returncode == -9

    async def consume():
        s = executor.stream(files.account, ["head", "-c", "200000", "/dev/zero"], timeout=10, idle_timeout=5)
        s.first_chunk()
        return b"".join([part async for part in s.async_chunks()])

    assert asyncio.run(consume()) == b"\0" * 200000


# --- uploading and new directories ----------------------------------------------------------------
def test_upload_writes_the_file_as_the_user_and_is_audited(bob, files):
    data = os.urandom(3 * 1024 * 1024)  # over Django's in-memory limit: fed from its temporary file
    response = bob.post(URL + "upload/", {"path": str(files.work), "file": SimpleUploadedFile("big.dat", data)})
    assert response.status_code == 302, _page(response)
    target = files.work / "big.dat"
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert target.stat().st_uid == files.user.pw_uid
    assert not [p for p in files.work.iterdir() if p.name.startswith(".clusterra-")]  # no temporary file left
    [event] = _events("file.upload")
    assert event.data == {"cluster": "hpc", "posix_user": files.user.pw_name, "path": str(target), "bytes": len(data),
                          "replace": False}
    # the same name again: refused unless replacing
    response = bob.post(URL + "upload/", {"path": str(files.work), "file": SimpleUploadedFile("big.dat", b"new")})
    assert response.status_code == 409 and "already exists" in _page(response)
    assert target.stat().st_size == len(data)
    response = bob.post(URL + "upload/", {"path": str(files.work), "file": SimpleUploadedFile("big.dat", b"new"), "replace": "1"})
    assert response.status_code == 302 and target.read_bytes() == b"new"


def test_upload_over_the_limit_is_refused_and_nothing_is_written(bob, files, settings):
    settings.FILES_MAX_UPLOAD_BYTES = 4096
    response = bob.post(URL + "upload/", {"path": str(files.work), "file": SimpleUploadedFile("huge.bin", b"x" * 5000)})
    page = _page(response)
    assert response.status_code == 413 and "uploads are limited to 4.0\xa0KB (4,096 bytes) (the portal&#x27;s setting CLUSTERRA_FILES_MAX_UPLOAD_BYTES)." in page and "Nothing was written" in page
    assert list(files.work.iterdir()) == [] and not _events("file.upload")
    ok = bob.post(URL + "upload/", {"path": str(files.work), "file": SimpleUploadedFile("fits.bin", b"x" * 4096)})
    assert ok.status_code == 302 and (files.work / "fits.bin").stat().st_size == 4096


class _UnreadBody:
    """A request body that must not be read: the view refuses on Content-Length alone."""

    def read(self, *args):
        raise AssertionError("the upload's body was read")

    readline = read


def test_an_upload_request_longer_than_the_limit_is_refused_before_its_body_is_read(bob, files, settings):
    settings.FILES_MAX_UPLOAD_BYTES = 4096
    too_long = str(4096 + actions.UPLOAD_FORM_HEADROOM + 1)
    response = bob.post(URL + "upload/", CONTENT_TYPE="multipart/form-data; boundary=x", CONTENT_LENGTH=too_long,
                        **{"wsgi.input": _UnreadBody()})
    page = _page(response)
    assert response.status_code == 413 and "uploads are limited to 4.0\xa0KB (4,096 bytes)" in page
    assert "Nothing was written" in page and 'class="' in page  # the refusal page, inside the layout
    assert list(files.work.iterdir()) == [] and not _events("file.upload")


def test_the_nginx_site_accepts_the_upload_limit_plus_the_form(monkeypatch):
    script = Path(__file__).resolve().parent.parent / "deploy" / "nginx-site.sh"

    def body_size(*args, env=None) -> int:
        site = subprocess.run([str(script), "--plain-http", "127.0.0.1:8080", *args], check=True, capture_output=True,
                              text=True, timeout=30, env={"PATH": os.environ["PATH"], **(env or {})}).stdout
        [line] = [line for line in site.splitlines() if "client_max_body_size" in line and "#" not in line]
        return int(line.split()[1].rstrip(";"))

    assert body_size() == 512 * 1024**2 + actions.UPLOAD_FORM_HEADROOM  # the portal's default limit
    assert body_size(env={"CLUSTERRA_FILES_MAX_UPLOAD_BYTES": "2000000"}) == 2_000_000 + actions.UPLOAD_FORM_HEADROOM
    assert body_size("--max-upload-bytes", "4096") == 4096 + actions.UPLOAD_FORM_HEADROOM
    bad = subprocess.run([str(script), "--max-upload-bytes", "4m"], check=False, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and bad.stdout == "" and "--max-upload-bytes must be a number" in bad.stderr


def test_an_upload_into_a_directory_swapped_since_the_check_is_refused(files):
    """UPLOAD_SCRIPT resolves the directory again right before writing: a path that no longer resolves to
    itself (here a link, as if the directory had been swapped for one after the portal's check) is refused."""
    (files.work / "real").mkdir()
    _own(files.work / "real", files.user, 0o755)
    os.symlink("real", files.work / "swapped")
    _own(files.work / "swapped", files.user, 0)
    with pytest.raises(remote.RemoteError, match="was moved or replaced") as caught:
        remote.write_new(files.account, str(files.work / "swapped"), "x.txt", b"data", replace=False, timeout=30)
    assert caught.value.status == 409
    assert list((files.work / "real").iterdir()) == []  # not even a temporary file


@needs_root
def test_upload_where_the_user_may_not_write_is_refused(bob, files):
    response = bob.post(URL + "upload/", {"path": str(files.shared), "file": SimpleUploadedFile("x.txt", b"x")})
    assert response.status_code == 403 and "Permission denied" in _page(response)
    assert list(files.shared.iterdir()) == []


def test_upload_names_are_checked(bob, files):
    response = bob.post(URL + "upload/", {"path": str(files.work), "file": ""})
    assert response.status_code == 400 and "Choose a file" in _page(response)
    # Django's multipart parser and UploadedFile already clean names from browsers; the action checks them again.
    for name, message in (("a\x01b", "control characters"), ("..", "is not a name"), ("a/b", "is not a name"),
                          ("n" * 256, "at most 255 bytes")):
        with pytest.raises(actions.FileActionError, match=message):
            actions.upload(files.account, str(files.work), SimpleNamespace(name=name, size=4), replace=False, actor=None)
    assert list(files.work.iterdir()) == []


def test_make_directory(bob, files):
    response = bob.post(URL + "mkdir/", {"path": str(files.work), "name": "results"})
    assert response.status_code == 302
    made = files.work / "results"
    assert made.is_dir() and made.stat().st_uid == files.user.pw_uid
    assert _events("file.mkdir")[0].data["path"] == str(made)
    response = bob.post(URL + "mkdir/", {"path": str(files.work), "name": "results"})
    assert response.status_code == 409 and "already exists" in _page(response)
    for name, message in (("a/b", "is not a name"), ("tab\there", "control characters"), ("x" * 256, "at most 255 bytes"), ("", "Give a name")):
        response = bob.post(URL + "mkdir/", {"path": str(files.work), "name": name})
        assert response.status_code == 400 and message in _page(response), name
    assert [p.name for p in files.work.iterdir()] == ["results"]


def test_every_post_needs_the_csrf_token(files):
    client = Client(enforce_csrf_checks=True)
    client.force_login(files.cast.bob)
    target = files.file("t.txt", "one\n")
    for view, data in (("upload/", {"path": str(files.work), "file": SimpleUploadedFile("u.txt", b"u")}),
                       ("mkdir/", {"path": str(files.work), "name": "d"}),
                       ("edit/", {"path": str(target), "text": "two\n", "sha256": hashlib.sha256(b"one\n").hexdigest()})):
        assert client.post(URL + view, data).status_code == 403, view
    assert sorted(p.name for p in files.work.iterdir()) == ["t.txt"] and target.read_text() == "one\n"


# --- editing --------------------------------------------------------------------------------------
def _open(client, path: Path) -> dict:
    page = _page(client.get(URL + "edit/", {"path": str(path)}))
    fields = {}
    for name in ("path", "sha256", "crlf"):
        start = page.index(f'name="{name}" value="') + len(f'name="{name}" value="')
        fields[name] = page[start:page.index('"', start)]
    return fields


def test_edit_saves_atomically_keeps_mode_and_line_endings(bob, files):
    script = files.file("job.sh", "#!/bin/bash\necho one\n", mode=0o750)
    inode = script.stat().st_ino
    form = _open(bob, script)
    assert form["sha256"] == hashlib.sha256(b"#!/bin/bash\necho one\n").hexdigest() and form["crlf"] == "0"
    # browsers send the textarea's line breaks as CRLF
    response = bob.post(URL + "edit/", {**form, "text": "#!/bin/bash\r\necho two\r\n"})
    assert response.status_code == 302, _page(response)
    assert script.read_bytes() == b"#!/bin/bash\necho two\n"
    assert stat.S_IMODE(script.stat().st_mode) == 0o750 and script.stat().st_uid == files.user.pw_uid
    assert script.stat().st_ino != inode  # replaced by a rename, not rewritten in place
    [event] = _events("file.edit")
    assert event.data["sha256_before"] == form["sha256"]
    assert event.data["sha256_after"] == hashlib.sha256(b"#!/bin/bash\necho two\n").hexdigest()
    dos = files.file("dos.txt", b"a\r\nb\r\n")
    form = _open(bob, dos)
    assert form["crlf"] == "1"
    bob.post(URL + "edit/", {**form, "text": "a\r\nc\r\n"})
    assert dos.read_bytes() == b"a\r\nc\r\n"


def test_opening_a_file_for_editing_is_audited_as_a_view(bob, files):
    target = files.file("conf.txt", "secret=1\n")
    _open(bob, target)
    [event] = _events("file.view")
    assert event.data == {"cluster": "hpc", "posix_user": files.user.pw_name, "path": str(target), "bytes": 9}
    assert event.actor == files.cast.bob and event.target_id == str(files.account.pk)


@needs_root
def test_editing_another_users_writable_file_in_a_sticky_directory_keeps_its_owner_and_group(bob, files):
    other = _ensure_posix_user("clusterra-t2")
    sticky = files.shared / "scratch"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)  # noqa: S103 (a shared scratch directory, as /tmp)
    shared_file = files.file("team.txt", "v1\n", mode=0o666, owner=other, base=sticky)
    form = _open(bob, shared_file)
    response = bob.post(URL + "edit/", {**form, "text": "v2\n"})
    assert response.status_code == 302, _page(response)
    assert shared_file.read_text() == "v2\n"
    after = shared_file.stat()
    assert (after.st_uid, after.st_gid, stat.S_IMODE(after.st_mode)) == (other.pw_uid, other.pw_gid, 0o666)
    assert [p.name for p in sticky.iterdir()] == ["team.txt"]  # no temporary file left beside it
    assert _events("file.edit")[0].data["sha256_after"] == hashlib.sha256(b"v2\n").hexdigest()


def test_a_file_changed_on_disk_since_it_was_opened_is_not_overwritten(bob, files):
    target = files.file("conf.txt", "version 1\n")
    form = _open(bob, target)
    target.write_text("changed elsewhere\n")
    response = bob.post(URL + "edit/", {**form, "text": "my edit\n"})
    page = _page(response)
    assert response.status_code == 409 and "was changed on disk since you opened it" in page and "Nothing was changed" in page
    assert "my edit" in page  # the user's text is kept in the form
    assert target.read_text() == "changed elsewhere\n" and not _events("file.edit")
    assert not [p for p in files.work.iterdir() if p.name.startswith(".clusterra-")]
    # a made-up version token is refused the same way
    response = bob.post(URL + "edit/", {**form, "sha256": "0" * 64, "text": "x"})
    assert response.status_code == 409 and target.read_text() == "changed elsewhere\n"
    response = bob.post(URL + "edit/", {**form, "sha256": "not-a-hash", "text": "x"})
    assert response.status_code == 400 and "open the file for editing again" in _page(response)


def test_binary_and_too_large_files_are_not_opened_for_editing(bob, files, settings):
    settings.FILES_MAX_EDIT_BYTES = 1024
    binary = files.file("prog", b"\x7fELF\x02\x01\x00\x00")
    response = bob.get(URL + "edit/", {"path": str(binary)})
    assert response.status_code == 415 and "binary file" in _page(response)
    latin1 = files.file("latin1.txt", "caf\xe9\n".encode("latin-1"))
    assert bob.get(URL + "edit/", {"path": str(latin1)}).status_code == 415
    large = files.file("large.txt", "x" * 2000)
    response = bob.get(URL + "edit/", {"path": str(large)})
    assert response.status_code == 413 and "files up to 1.0\xa0KB (1,024 bytes) can be edited here" in _page(response)
    small = files.file("small.txt", "ok\n")
    form = _open(bob, small)
    response = bob.post(URL + "edit/", {**form, "text": "y" * 2000})
    assert response.status_code == 413 and small.read_text() == "ok\n"
    response = bob.post(URL + "edit/", {**form, "text": "nul\x00byte"})
    assert response.status_code == 415 and small.read_text() == "ok\n"


@needs_root
def test_edit_in_a_directory_the_user_cannot_write_is_refused(bob, files):
    shared_file = files.file("group.txt", "shared\n", mode=0o666, base=files.shared)  # root's directory, 0755
    form = _open(bob, shared_file)
    response = bob.post(URL + "edit/", {**form, "text": "mine\n"})
    assert response.status_code == 403 and "may not create files in its directory" in _page(response)
    assert shared_file.read_text() == "shared\n"


# --- SSM: the same operations through SendCommand ---------------------------------------------------
@pytest.fixture
def ssm_files(files, monkeypatch, tmp_path):
    client = botocore.session.get_session().create_client(
        "ssm", region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")  # noqa: S106
    peer = RunCommandPeer(client, INSTANCE, tmp_path)
    monkeypatch.setattr(aws, "account_client", lambda account, service, **kw: client)
    files.cast.hpc.backend = "ssm"
    files.cast.hpc.backend_settings = {"region": REGION, "instance_id": INSTANCE, "role_arn": ROLE}
    files.cast.hpc.save()
    files.peer = peer
    yield files
    for command in peer.commands.values():
        if command["proc"] is not None and command["proc"].poll() is None:
            os.killpg(command["proc"].pid, 9)
            command["proc"].wait(5)


@needs_root
def test_ssm_list_view_download_upload_edit_as_the_user(bob, ssm_files):
    files = ssm_files
    name = "ünïcode name.txt"
    target = files.file(name, "line\n")
    page = _page(bob.get(URL, {"path": str(files.work)}))
    assert name in page and "-rw-r--r--" in page
    assert "line" in _page(bob.get(URL + "view/", {"path": str(target)}))
    blob = files.file("blob.bin", bytes(range(256)) * 8)
    response = bob.get(URL + "download/", {"path": str(blob)})
    assert response.status_code == 200 and response.content == bytes(range(256)) * 8
    response = bob.post(URL + "upload/", {"path": str(files.work), "file": SimpleUploadedFile("up.txt", b"via ssm\n")})
    assert response.status_code == 302, _page(response)
    assert (files.work / "up.txt").read_bytes() == b"via ssm\n" and (files.work / "up.txt").stat().st_uid == files.user.pw_uid
    form = _open(bob, target)
    assert bob.post(URL + "edit/", {**form, "text": "edited\r\n"}).status_code == 302
    assert target.read_text() == "edited\n"
    sends = [body for operation, body in files.peer.requests if operation == "SendCommand"]
    assert sends and all("runuser -u \"$u\"" in body["Parameters"]["commands"][0] for body in sends)
    assert {e.action for e in AuditEvent.objects.all()} >= {"file.view", "file.download", "file.upload", "file.edit"}


@needs_root
def test_ssm_limits_are_named_and_nothing_is_sent(bob, ssm_files):
    files = ssm_files
    response = bob.post(URL + "upload/", {"path": str(files.work), "file": SimpleUploadedFile("big.bin", b"x" * 50_000)})
    page = _page(response)
    assert response.status_code == 413 and "at most 39.0\xa0KB (39,936 bytes)" in page and "SendCommand" in page
    assert list(files.work.iterdir()) == []
    large = files.file("large.bin", b"y" * 20_000)
    response = bob.get(URL + "download/", {"path": str(large)})
    assert response.status_code == 413 and "no S3 output bucket is configured" in _page(response)
    sends = [body for operation, body in files.peer.requests if operation == "SendCommand"]
    assert all("upload" not in body["Parameters"]["commands"][0] for body in sends)


@needs_root
def test_ssm_symlink_escape_and_other_users_file_are_refused(bob, ssm_files):
    files = ssm_files
    other = _ensure_posix_user("clusterra-t2")
    os.symlink("/etc", files.work / "escape")
    secret = files.file("theirs.txt", "their secret\n", mode=0o600, owner=other, base=files.shared)
    response = bob.get(URL, {"path": str(files.work / "escape")})
    assert response.status_code == 403 and "outside" in _page(response)
    response = bob.get(URL + "view/", {"path": str(secret)})
    assert response.status_code == 403 and "Permission denied" in _page(response) and "their secret" not in _page(response)


def test_limits_follow_the_settings_and_ssm(files, settings):
    settings.FILES_MAX_UPLOAD_BYTES = 10_000
    assert actions.limits(files.account).upload == 10_000 and actions.limits(files.account).download is None
    files.cast.hpc.backend = "ssm"
    files.cast.hpc.backend_settings = {"region": REGION, "instance_id": INSTANCE, "role_arn": ROLE, "s3_bucket": "logs-bucket"}
    files.cast.hpc.save()
    files.account.refresh_from_db()
    limits = actions.limits(files.account)
    assert limits.upload == 10_000 and limits.download == actions.SSM_S3_OUTPUT_BYTES and "S3 output bucket" in limits.note
    settings.FILES_MAX_UPLOAD_BYTES = 10**9
    assert actions.limits(files.account).upload == actions.SSM_MAX_INPUT_BYTES


def test_cluster_page_links_to_files(bob, files):
    assert 'href="/t/acme/c/hpc/files/">Files</a>' in _page(bob.get("/t/acme/c/hpc/"))

