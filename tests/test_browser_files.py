"""The file browser in Debian's Chromium (Playwright) against daphne, at desktop and phone widths:
upload, edit, download, another user's file refused, and the listing inside the page on a phone."""

import os
from pathlib import Path

import pytest

from tests.conftest import _ensure_posix_user
from tests.test_browser import CHROMIUM, sign_in
from tests.test_filebrowser import files  # noqa: F401 (fixture: a work directory in the user's home, a shared root)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

WIDTHS = {"desktop": {"width": 1200, "height": 800}, "phone": {"width": 390, "height": 844}}


@pytest.fixture(params=list(WIDTHS))
def files_page(request):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Chromium is not installed (make test installs Debian's chromium)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run",
                                                                    "--disable-background-networking", "--disable-sync"])
        # Under the portal's real Content-Security-Policy: nothing here needs eval().
        context = browser.new_context(viewport=WIDTHS[request.param], accept_downloads=True)
        page = context.new_page()
        page.width_name = request.param
        yield page
        browser.close()


def _no_horizontal_overflow(page):
    width = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"the page is {width[0]} px wide in a {width[1]} px viewport"
    table = page.locator("table.fb-table").bounding_box()
    assert table["x"] >= 0 and table["x"] + table["width"] <= width[1]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a second POSIX user owns the refused file")
def test_upload_edit_download_and_refusal(files, live_daphne, files_page, tmp_path):  # noqa: F811
    page = files_page
    other = _ensure_posix_user("clusterra-t2")
    secret = files.file("theirs.txt", "their secret\n", mode=0o600, owner=other, base=files.shared)
    long_name = "a-rather-long-result-file-name-from-a-parameter-sweep-" + "x" * 40 + ".csv"
    files.file(long_name, "1,2,3\n")
    listing = f"/t/acme/c/hpc/files/?path={files.work}"
    sign_in(page, live_daphne, listing)
    page.locator("table.fb-table").get_by_role("link", name=long_name).wait_for()
    _no_horizontal_overflow(page)

    # upload
    page.set_input_files("#fb-file", files=[{"name": "hello.sh", "mimeType": "text/x-sh", "buffer": b"#!/bin/bash\necho hello\n"}])
    page.get_by_role("button", name="Upload", exact=True).click()
    page.locator(".messages li", has_text="Uploaded").wait_for()
    assert (files.work / "hello.sh").read_bytes() == b"#!/bin/bash\necho hello\n"
    assert (files.work / "hello.sh").stat().st_uid == files.user.pw_uid
    row = page.locator("table.fb-table tr", has_text="hello.sh")
    assert row.get_by_role("link", name="Submit").get_attribute("href").endswith(
        "/jobs/submit/?script_path=" + str(files.work / "hello.sh").replace("/", "%2F"))
    _no_horizontal_overflow(page)
    page.screenshot(path=str(tmp_path / f"listing-{page.width_name}.png"), full_page=True)

    # edit
    row.get_by_role("link", name="Edit").click()
    page.locator("textarea[name=text]").wait_for()
    assert page.locator("textarea[name=text]").input_value() == "#!/bin/bash\necho hello\n"
    page.fill("textarea[name=text]", "#!/bin/bash\necho edited\n")
    page.get_by_role("button", name="Save").click()
    page.locator(".messages li", has_text="Saved").wait_for()
    assert (files.work / "hello.sh").read_bytes() == b"#!/bin/bash\necho edited\n"  # LF, as the file had
    assert "echo edited" in page.locator("pre.fb-preview").inner_text()

    # download
    with page.expect_download() as caught:
        page.locator(".actions").get_by_role("link", name="Download").click()
    download = caught.value
    assert download.suggested_filename == "hello.sh"
    assert Path(download.path()).read_bytes() == b"#!/bin/bash\necho edited\n"

    # another user's file: listed in the shared root, refused when opened
    page.goto(f"{live_daphne}/t/acme/c/hpc/files/?path={files.shared}")
    page.get_by_role("link", name="theirs.txt").click()
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert f"Permission denied: your POSIX account {files.user.pw_name} may not read {secret}" in alert.inner_text()
    assert "their secret" not in page.content()
    assert secret.read_text() == "their secret\n"
