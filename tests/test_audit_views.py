"""Session search, playback and the events pages (issue 11 §5, §1 export, §7 visibility), with the tenant cast.

Each session here is a real one (open_terminal_session, finish_terminal_session) with a real asciicast in
the spool, indexed by the real indexer (audit/indexing.py). Every session prints "needle", so one search
shows what each viewer may see: bob (member) his own, alice (admin) all of acme, charlie (other) none of it.
"""

import csv
import io
import json

import orjson
import pytest
import requests
from asgiref.sync import async_to_sync
from django.test import AsyncRequestFactory, Client, RequestFactory

from audit.indexing import index_recording
from audit.models import AuditEvent
from audit.services import record_event
from clusterra.streaming import streaming_response
from terminal import recordings
from terminal.actions import finish_terminal_session, open_terminal_session
from terminal.models import SessionLog
from tests.terminal_client import signed_in_cookie

pytestmark = pytest.mark.django_db


def make_cast(events: list[tuple[float, str]]) -> bytes:
    header = {"version": 2, "width": 80, "height": 24, "timestamp": 1767225600, "env": {"TERM": "xterm-256color"}}
    return b"".join([orjson.dumps(header) + b"\n", *(orjson.dumps([t, "o", text]) + b"\n" for t, text in events)])


def recorded_session(user, tenant_slug: str, events: list[tuple[float, str]], *, end: bool = True):
    """A terminal session with `events` as its recording (in the spool, where the recorder writes), indexed."""
    session = open_terminal_session(user=user, tenant_slug=tenant_slug, cluster_slug="hpc", working_directory=None,
                                    client_address="203.0.113.7", user_agent="test")
    data = make_cast(events)
    with recordings.create_spool_file(session.recording_path) as spool:
        spool.write(data)
    if end:
        finish_terminal_session(session, reason="closed", bytes_out=len(data))
    session.refresh_from_db()  # ended: the index copies the end reason
    index_recording(session, data, log_kind="asciicast")
    session.cast = data
    return session


def shell(command: str, output: str, at: float = 1.0) -> list[tuple[float, str]]:
    """A prompt, a command typed at it (echoed), its output, the next prompt."""
    return [(0.2, "user@hpc:~$ "), (at, command), (at + 0.1, "\r\n"), (at + 0.3, f"{output}\r\n"), (at + 0.5, "user@hpc:~$ ")]


@pytest.fixture
def world(cast):
    cast.bob_session = recorded_session(cast.bob, "acme", shell("echo needle-bob", "needle-bob", at=83.0))
    cast.alice_session = recorded_session(cast.alice, "acme", shell("echo needle-alice", "needle-alice"))
    cast.charlie_session = recorded_session(cast.charlie, "other", shell("echo needle-charlie", "needle-charlie"))
    return cast


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


# A hit shows "<mark>needle</mark>-bob": the tests look for "</mark>-bob" (present or absent).


def page_text(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


# --- visibility (§7) ----------------------------------------------------------------------------------


def test_a_member_finds_only_their_own_sessions(world, django_assert_max_num_queries):
    client = signed_in(world.bob)
    with django_assert_max_num_queries(8):  # a fixed few, whatever the number of hits
        page = page_text(client.get("/t/acme/audit/sessions/", {"q": "needle"}))
    assert "<mark>needle</mark>-bob" in page
    assert "</mark>-alice" not in page and "</mark>-charlie" not in page
    # The hit: the session, the matching line, its time as Slurm writes durations, a link to play from there.
    assert "Acme HPC" in page and "+1:23" in page
    assert f'/t/acme/audit/sessions/{world.bob_session.pk}/?t=83' in page
    # Without text, the list of the member's sessions.
    listing = page_text(client.get("/t/acme/audit/sessions/"))
    assert str(world.bob_session.pk) in listing and str(world.alice_session.pk) not in listing
    # A member cannot widen the search to another person (the field does not exist for them).
    sneaky = page_text(client.get("/t/acme/audit/sessions/", {"q": "needle", "person": "alice@acme.test"}))
    assert "</mark>-alice" not in sneaky and "</mark>-bob" in sneaky


def test_the_admins_activity_page_searches_every_session_of_the_tenant(world, django_assert_max_num_queries):
    client = signed_in(world.alice)
    with django_assert_max_num_queries(9):  # as many whatever the hits: no query per hit or session
        page = page_text(client.get("/t/acme/admin/activity/", {"q": "needle"}))
    assert "<mark>needle</mark>-bob" in page and "<mark>needle</mark>-alice" in page and "</mark>-charlie" not in page
    assert "bob@acme.test" in page  # the person of each hit
    only_bob = page_text(client.get("/t/acme/admin/activity/", {"q": "needle", "person": "BOB@acme.test"}))
    assert "</mark>-bob" in only_bob and "</mark>-alice" not in only_bob
    outsider = page_text(client.get("/t/acme/admin/activity/", {"q": "needle", "person": "charlie@other.test"}))
    assert "No one with this email in Acme Research" in outsider and 'class="hit-group"' not in outsider
    # Filters: cluster, end reason, time range.
    assert "</mark>-bob" in page_text(client.get("/t/acme/admin/activity/", {"q": "needle", "cluster": world.hpc.pk, "end_reason": "closed"}))
    assert "</mark>-bob" not in page_text(client.get("/t/acme/admin/activity/", {"q": "needle", "end_reason": "idle"}))
    assert "</mark>-bob" not in page_text(client.get("/t/acme/admin/activity/", {"q": "needle", "since": "2001-01-01", "until": "2001-01-02"}))
    listing = page_text(client.get("/t/acme/admin/activity/"))
    assert str(world.bob_session.pk) in listing and str(world.alice_session.pk) in listing
    assert str(world.charlie_session.pk) not in listing


def test_another_person_and_another_tenant_see_nothing(world):
    bob_session = world.bob_session
    base = f"/t/acme/audit/sessions/{bob_session.pk}"
    urls = [f"{base}/", f"{base}/recording.cast", f"{base}/ssm.log"]
    for user in (world.charlie, world.rita):  # another tenant; a member who is not the owner (revoked account, still a member)
        client = signed_in(user)
        for url in urls:
            assert client.get(url).status_code == 404, (user, url)
    charlie = signed_in(world.charlie)
    for url in ("/t/acme/audit/sessions/?q=needle", "/t/acme/audit/events/", "/t/acme/admin/activity/?q=needle",
                "/t/acme/admin/activity/events/", "/t/acme/admin/activity/events/export.jsonl"):
        assert charlie.get(url).status_code == 404, url
    # charlie's own tenant, bob's session id: still nothing.
    assert charlie.get(f"/t/other/audit/sessions/{bob_session.pk}/").status_code == 404
    assert "</mark>-bob" not in page_text(charlie.get("/t/other/admin/activity/", {"q": "needle"}))
    # bob: not alice's session, not the console.
    bob = signed_in(world.bob)
    assert bob.get(f"/t/acme/audit/sessions/{world.alice_session.pk}/").status_code == 404
    assert bob.get(f"/t/acme/audit/sessions/{world.alice_session.pk}/recording.cast").status_code == 404
    assert bob.get("/t/acme/admin/activity/").status_code == 404
    assert bob.get("/t/acme/admin/activity/events/export.csv").status_code == 404
    assert not AuditEvent.objects.filter(action="recording.view").exists()
    assert Client().get(f"{base}/").status_code == 302  # signed out: to the sign-in page


# --- playback -----------------------------------------------------------------------------------------


def test_playback_page_shows_the_session_its_events_and_starts_at_the_offset(world, client):
    session = world.bob_session
    client.force_login(world.bob)
    response = client.get(f"/t/acme/audit/sessions/{session.pk}/", {"t": "83", "speed": "2"})
    page = page_text(response)
    assert 'data-start="83.0"' in page and 'data-speed="2"' in page and 'data-autoplay="true"' in page
    assert '<option value="2" selected>' in page  # the speed selector
    assert 'data-markers="[[83.0, &quot;Search hit&quot;]]"' in page  # on the player's timeline
    assert f'data-src="/t/acme/audit/sessions/{session.pk}/recording.cast"' in page
    for fact in ("bob@acme.test", f"<code>{session.posix_username}</code>", "Acme HPC", "(local)", "Closed", "203.0.113.7"):
        assert fact in page, fact
    assert page.index("terminal.session.start") < page.index("terminal.session.end")
    # The player and its script come from the project's static files, and only this page may run WebAssembly.
    assert "/static/vendor/asciinema-player/asciinema-player.min.js" in page and "/static/audit/playback.js" in page
    assert "'wasm-unsafe-eval'" in response["Content-Security-Policy"]
    assert "'wasm-unsafe-eval'" not in client.get("/t/acme/audit/sessions/")["Content-Security-Policy"]
    player = client.get("/static/vendor/asciinema-player/asciinema-player.min.js")
    assert player.status_code == 200 and b"AsciinemaPlayer" in b"".join(player.streaming_content)
    # The admin sees it too; a bad offset or speed falls back to the start at normal speed.
    admin = page_text(signed_in(world.alice).get(f"/t/acme/audit/sessions/{session.pk}/", {"t": "nan", "speed": "99"}))
    assert 'data-start="0.0"' in admin and 'data-speed="1"' in admin and 'data-autoplay="false"' in admin


def test_the_recording_is_streamed_to_its_owner_and_admins_and_each_view_is_an_event(world):
    session = world.bob_session
    for viewer in (world.bob, world.alice):
        response = signed_in(viewer).get(f"/t/acme/audit/sessions/{session.pk}/recording.cast", REMOTE_ADDR="198.51.100.9")
        assert response.status_code == 200 and response.streaming
        assert response["Content-Type"] == "application/x-asciicast"
        assert response["Cache-Control"] == "private, no-store"
        assert b"".join(response.streaming_content) == session.cast
    views = AuditEvent.objects.filter(action="recording.view").order_by("pk")
    assert [(e.actor, e.target_id, e.data["log_kind"], e.client_address) for e in views] == [
        (world.bob, str(session.pk), "asciicast", "198.51.100.9"), (world.alice, str(session.pk), "asciicast", "198.51.100.9")]
    assert views[0].tenant == world.acme and views[0].target_type == "terminal.terminalsession"


def test_an_ssm_log_is_offered_as_text_and_as_a_download(world):
    session = world.bob_session
    client = signed_in(world.alice)
    assert client.get(f"/t/acme/audit/sessions/{session.pk}/ssm.log").status_code == 404  # none yet
    raw = b"\x1b[?2004hsh-4.2$ ls /fsx\r\n\x1b[0m<b>data</b>\r\n"
    path = session.recording_path.removesuffix(".cast") + ".ssm.log"
    with recordings.create_spool_file(path) as spool:
        spool.write(raw)
    SessionLog.objects.create(session=session, kind=SessionLog.Kind.SSM_S3, path=path, state=SessionLog.State.SPOOLED,
                              source="s3://logs/sessions/bob-0123.log")
    page = page_text(client.get(f"/t/acme/audit/sessions/{session.pk}/"))
    assert f"/t/acme/audit/sessions/{session.pk}/ssm.log?download=1" in page
    text = client.get(f"/t/acme/audit/sessions/{session.pk}/ssm.log")
    assert text["Content-Type"] == "text/plain; charset=utf-8" and text["Content-Disposition"].startswith("inline")
    assert b"".join(text.streaming_content) == raw
    download = client.get(f"/t/acme/audit/sessions/{session.pk}/ssm.log", {"download": "1"})
    assert download["Content-Disposition"] == f'attachment; filename="{session.pk}.log"'
    assert AuditEvent.objects.filter(action="recording.view", data__log_kind="ssm_s3").count() == 2


def test_a_late_missing_or_partly_indexed_log_is_flagged(world):
    session = world.bob_session
    SessionLog.objects.filter(session=session, kind=SessionLog.Kind.ASCIICAST).update(
        index_state=SessionLog.IndexState.PARTIAL, index_note="truncated at byte 120")
    SessionLog.objects.create(session=session, kind=SessionLog.Kind.SSM_S3, path="acme/x.ssm.log", state=SessionLog.State.LATE,
                              source="s3://logs/x.log")
    client = signed_in(world.bob)
    for url in ("/t/acme/audit/sessions/", f"/t/acme/audit/sessions/{session.pk}/", "/t/acme/audit/sessions/?q=needle"):
        page = page_text(client.get(url))
        assert 'flag-problem">SSM log: Late: not delivered by the SSM agent yet' in page, url
        assert "Recording: Indexed as far as it could be read (truncated at byte 120)" in page, url
    SessionLog.objects.filter(session=session, kind=SessionLog.Kind.ASCIICAST).update(state=SessionLog.State.MISSING)
    page = page_text(client.get(f"/t/acme/audit/sessions/{session.pk}/"))
    assert "Recording: Missing" in page and "recording.cast" not in page  # nothing to play


# --- bad input --------------------------------------------------------------------------------------


def test_terminal_text_is_escaped_wherever_it_is_shown(world):
    evil = recorded_session(world.bob, "acme", shell("echo '<script>alert(1)</script>' needle-evil",
                                                     "<script>alert(1)</script> needle-evil <img src=x onerror=alert(2)>"))
    record_event("job.submit", tenant=world.acme, actor=world.bob, target=evil, data={"name": "<script>alert(3)</script>"})
    for client, url in ((signed_in(world.bob), "/t/acme/audit/sessions/?q=needle-evil"),
                        (signed_in(world.alice), "/t/acme/admin/activity/?q=%3Cscript%3E"),
                        (signed_in(world.bob), f"/t/acme/audit/sessions/{evil.pk}/"),
                        (signed_in(world.alice), "/t/acme/admin/activity/events/")):
        page = page_text(client.get(url))
        assert "<script>alert" not in page and "<img src=x" not in page, url
    page = page_text(signed_in(world.alice).get("/t/acme/admin/activity/?q=%3Cscript%3E"))
    assert "<mark>&lt;script&gt;</mark>alert(1)&lt;/script&gt;" in page


@pytest.mark.parametrize("text, message", [("ab", "Search for at least 3 characters."),
                                           ("x" * 201, "Ensure this value has at most 200 characters (it has 201).")])
def test_a_search_too_short_or_too_long_is_refused_with_a_message(world, text, message):
    page = page_text(signed_in(world.bob).get("/t/acme/audit/sessions/", {"q": text}))
    assert message in page and "hit-group" not in page


def test_a_bad_cursor_is_a_message_not_an_error(world):
    page = page_text(signed_in(world.alice).get("/t/acme/admin/activity/events/", {"cursor": "bm9wZQ"}))
    assert "The cursor is not valid" in page


# --- pagination ---------------------------------------------------------------------------------------


def test_more_results_and_more_sessions_follow_the_cursor(world, monkeypatch):
    monkeypatch.setattr("audit.views.PAGE_SIZE", 1)
    client = signed_in(world.alice)
    first = page_text(client.get("/t/acme/admin/activity/", {"q": "needle"}))
    assert first.count('class="hit-group"') == 1 and "More results" in first
    more_url = first.split('hx-get="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    rest = page_text(client.get(f"/t/acme/admin/activity/{more_url}", HTTP_HX_REQUEST="true"))
    assert "<html" not in rest and 'class="hit-group"' in rest  # htmx gets the next hits only
    listed = page_text(client.get("/t/acme/admin/activity/"))
    assert listed.count("Play</a>") == 1 and "More sessions" in listed
    more_url = listed.split('hx-get="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    second = page_text(client.get(f"/t/acme/admin/activity/{more_url}", HTTP_HX_REQUEST="true"))
    assert second.count("Play</a>") == 1 and "<html" not in second
    ids = {str(world.bob_session.pk), str(world.alice_session.pk)}
    assert {i for i in ids if i in listed} | {i for i in ids if i in second} == ids


# --- events and export ------------------------------------------------------------------------------


def test_events_tab_filters_and_pages_newest_first(world, monkeypatch):
    record_event("person.suspend", tenant=world.acme, actor=world.alice, data={"user": "bob@acme.test", "reason": "holiday"})
    record_event("secret.other", tenant=world.other, actor=world.charlie)
    client = signed_in(world.alice)
    page = page_text(client.get("/t/acme/admin/activity/events/"))
    assert page.index("person.suspend") < page.index("terminal.session.start") and "secret.other" not in page
    assert "user=bob@acme.test reason=holiday" in page
    only = page_text(client.get("/t/acme/admin/activity/events/", {"action": "terminal.*", "actor": "BOB@"}))
    assert "<code>terminal.session.start</code>" in only and "person.suspend" not in only
    assert "alice@acme.test" not in only.split("<tbody>", 1)[1]
    target = page_text(client.get("/t/acme/admin/activity/events/", {"target": f"terminal.terminalsession:{world.bob_session.pk}"}))
    assert target.count("<code>terminal.session.") == 2  # start and end of bob's session
    monkeypatch.setattr("audit.views.PAGE_SIZE", 2)
    first = page_text(client.get("/t/acme/admin/activity/events/", {"action": "terminal.session."}))
    more_url = first.split('hx-get="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    assert "action=terminal.session." in more_url
    second = page_text(client.get(f"/t/acme/admin/activity/events/{more_url}", HTTP_HX_REQUEST="true"))
    assert second.count("<code>terminal.session.") == 2 and "<html" not in second


def test_a_member_sees_only_what_they_did(world):
    page = page_text(signed_in(world.bob).get("/t/acme/audit/events/"))
    rows = page.split("<tbody>", 1)[1]
    assert rows.count("<code>terminal.session.start</code>") == 1 and "Actor email" not in page
    assert "person.suspend" not in page and "Export" not in page


def _rows(response) -> bytes:
    assert response.status_code == 200 and response.streaming
    return b"".join(response.streaming_content)


def test_export_streams_the_filtered_events_and_is_itself_an_event(world):
    # A label a spreadsheet would run as a formula (an email may start with "=").
    AuditEvent.objects.create(tenant=world.acme, actor_label="=1+1@acme.test", action="job.submit", data={"name": "x"})
    client = signed_in(world.alice)
    query = {"action": "terminal.session.*", "actor": "bob@"}
    response = client.get("/t/acme/admin/activity/events/export.jsonl", query)
    assert response["Content-Type"] == "application/x-ndjson; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="audit-acme-')
    lines = [json.loads(line) for line in _rows(response).splitlines()]
    assert [row["action"] for row in lines] == ["terminal.session.start", "terminal.session.end"]  # oldest first
    assert all(row["actor"] == "bob@acme.test" and row["tenant"] == "acme" for row in lines)
    assert {"sequence", "prev_hash", "hash", "data", "client_address", "target_id"} <= set(lines[0])
    export = AuditEvent.objects.get(action="audit.export")
    assert export.actor == world.alice and export.tenant == world.acme
    assert export.data == {"format": "jsonl", "filters": {"action": "terminal.session.*", "actor": "bob@"}, "rows": 2}
    # CSV: a header, the same rows; a cell a spreadsheet would run as a formula is defused.
    table = list(csv.DictReader(io.StringIO(_rows(client.get("/t/acme/admin/activity/events/export.csv",
                                                             {"action": "job.submit"})).decode())))
    assert [(row["action"], row["actor"], json.loads(row["data"])) for row in table] == [("job.submit", "'=1+1@acme.test", {"name": "x"})]
    jsonl = _rows(client.get("/t/acme/admin/activity/events/export.jsonl", {"action": "job.submit"}))
    assert json.loads(jsonl)["actor"] == "=1+1@acme.test"  # JSON lines are exact
    assert AuditEvent.objects.filter(action="audit.export").count() == 3
    # Invalid filters: no export, no event.
    assert client.get("/t/acme/admin/activity/events/export.csv", {"since": "yesterday"}).status_code == 400
    assert AuditEvent.objects.filter(action="audit.export").count() == 3


# --- streaming under daphne -----------------------------------------------------------------------------


def test_under_asgi_a_streamed_response_is_read_chunk_by_chunk():
    """Django reads a synchronous iterator to its end before an ASGI response starts: we hand it an asynchronous one."""
    read = []

    def chunks():
        for piece in (b"one ", b"two ", b"three"):
            read.append(piece)
            yield piece

    asynchronous = streaming_response(AsyncRequestFactory().get("/"), chunks(), content_type="text/plain")
    assert asynchronous.is_async and read == []

    async def first_chunk():
        iterator = aiter(asynchronous)
        first = await anext(iterator)
        await iterator.aclose()
        return first

    assert async_to_sync(first_chunk)() == b"one " and read == [b"one "]  # one chunk read, not all of them
    synchronous = streaming_response(RequestFactory().get("/"), chunks(), content_type="text/plain")
    assert not synchronous.is_async and b"".join(synchronous.streaming_content) == b"one two three"


@pytest.mark.slow
def test_daphne_streams_a_recording_and_an_export(world, live_daphne):
    """The asynchronous path end to end: a 4 MB recording from the spool, an export read from the database."""
    big = recorded_session(world.bob, "acme", [(i / 100, f"line {i:06d} " + "x" * 200 + "\r\n") for i in range(20000)])
    cookies = {"sessionid": signed_in_cookie(world.alice)}
    response = requests.get(f"{live_daphne}/t/acme/audit/sessions/{big.pk}/recording.cast", cookies=cookies, timeout=60)
    assert response.status_code == 200 and response.content == big.cast and len(big.cast) > 4_000_000
    export = requests.get(f"{live_daphne}/t/acme/admin/activity/events/export.jsonl", cookies=cookies, timeout=60)
    assert export.status_code == 200 and export.headers["Content-Type"] == "application/x-ndjson; charset=utf-8"
    assert {json.loads(line)["action"] for line in export.text.splitlines()} >= {"terminal.session.start", "recording.view"}
