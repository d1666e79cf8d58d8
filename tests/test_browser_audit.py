"""Search and playback in a real browser (Debian's Chromium) under the Content-Security-Policy.

bob searches his sessions, clicks the time of a hit and the player starts there: asciinema-player, served
from the project's static files, with its WebAssembly terminal allowed on that page only. A change of speed
keeps the position, and the recording is fetched (and audited) once.
"""

import pytest

from audit.models import AuditEvent
from tests.conftest import run_daphne
from tests.test_audit_views import recorded_session, shell
from tests.test_browser import _in_thread, chromium_page, sign_in
from tests.test_browser_csp import _until, watch_console

pytestmark = [pytest.mark.browser, pytest.mark.slow]

_PLAYER_TEXT = "() => (document.querySelector('#player .ap-term') || {}).textContent || ''"


def test_a_hit_opens_playback_at_that_moment(cast, transactional_db, tmp_path, settings):
    # A session of two minutes: the hit comes at 1:23, something else printed long before and long after.
    events = [(1.0, "early-line\r\n"), *shell("echo needle-browser", "needle-browser", at=83.0), (110.0, "late-line\r\n")]
    session = recorded_session(cast.bob, "acme", events)
    with run_daphne(tmp_path, settings) as base, chromium_page(bypass_csp=False) as page:
        console = watch_console(page)
        sign_in(page, base, "/t/acme/audit/sessions/%3Fq%3Dneedle-browser")
        assert page.locator(".hit-text mark").first.inner_text() == "needle-browser"
        with page.expect_navigation() as navigation:
            page.locator("a.hit-at").first.click()
        assert f"/t/acme/audit/sessions/{session.pk}/?t=83" in page.url
        assert "'wasm-unsafe-eval'" in navigation.value.headers["content-security-policy"]

        # The player starts at the hit: the line is on the screen, the early one scrolled past is there too,
        # the late one is not yet.
        _until(page, "() => !!window.clusterraPlayer && window.clusterraPlayer.getCurrentTime() >= 83", what="playing from 1:23")
        _until(page, f"() => ({_PLAYER_TEXT})().includes('needle-browser')", what="the hit's line on the player's screen")
        assert "late-line" not in page.evaluate(f"() => ({_PLAYER_TEXT})()")
        position = page.evaluate("() => window.clusterraPlayer.getCurrentTime()")
        assert 83 <= position < 100

        # Faster: the same place, the same recording (no second fetch), the speed in the address.
        page.select_option("#player-speed", "4")
        _until(page, "() => window.clusterraPlayer.getCurrentTime() >= 83", what="the new player at the same place")
        assert page.url.endswith("speed=4")
        assert page.evaluate("() => window.__csp") == []
        assert not [line for line in console if "Content Security Policy" in line or "Refused to" in line], console

    views = _in_thread(lambda: list(AuditEvent.objects.filter(action="recording.view").values_list("actor__email", "target_id")))
    assert views == [("bob@acme.test", str(session.pk))]
