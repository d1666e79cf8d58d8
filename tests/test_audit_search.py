"""The index of what sessions showed and its search (audit/indexing.py, audit/search.py; issue 11 §4).

These run on PostgreSQL (pg_trgm) like the rest of the suite; test_the_same_tests_pass_on_sqlite runs this
whole file again in a child pytest on SQLite, where the index is FTS5 with the trigram tokenizer.
"""

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from django.db import connection

from audit import search as audit_search
from audit.indexing import CHUNK_LINES, delete_session_index, index_recording
from audit.models import TranscriptChunk, TranscriptSource
from audit.search import MAX_QUERY_LENGTH, SearchQueryError, SessionFilter, search
from clusters.models import ClusterAccount
from clusters.services import ensure_cluster, map_account
from terminal.models import TerminalSession
from tests.conftest import BASE_DIR

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def cast_bytes(events, width=80, height=24) -> bytes:
    header = orjson.dumps({"version": 2, "width": width, "height": height})
    return b"\n".join([header, *(orjson.dumps([t, "o", text]) for t, text in events)]) + b"\n"


def typed(command: str, output: str, at: float, prompt: str = "bob@hpc:~/run$ ") -> list[tuple[float, str]]:
    """A prompt, the command echoed key by key, Enter, its output."""
    events = [(at, prompt)]
    events += [(at + 0.1 * (i + 1), char) for i, char in enumerate(command)]
    events += [(at + 0.1 * (len(command) + 1), "\r\n"), (at + 0.1 * (len(command) + 2), output)]
    return events


def session_with(cast, user, events, *, cluster=None, started=T0, end_reason="closed", log_kind="asciicast", data=None):
    cluster = cluster or (cast.hpc if user != cast.charlie else cast.other_hpc)
    account = ClusterAccount.objects.get(cluster=cluster, user=user)
    session = TerminalSession.objects.create(user=user, cluster=cluster, account=account, posix_username=account.posix_username,
                                             backend="local", end_reason=end_reason, ended_at=started + timedelta(hours=1))
    TerminalSession.objects.filter(pk=session.pk).update(started_at=started)
    session.refresh_from_db()
    result = index_recording(session, data if data is not None else cast_bytes(events), log_kind=log_kind)
    assert result.complete, result.note
    return session


def texts(page) -> list[str]:
    return [hit.text for hit in page.hits]


@pytest.fixture
def world(cast):
    """bob's job session, alice's admin session and charlie's (other tenant), at different times."""
    w = cast
    w.bob_job = session_with(cast, cast.bob, [
        *typed("sbatch --mem=64G --time=2:00:00 train_model.py", "Submitted batch job 4242\r\n", 1.0),
        *typed("cat results/ACCURACY.txt", "accuracy=0.93 on the \x1b[1mheld-out\x1b[0m set\r\n", 10.0),
    ], started=T0 + timedelta(hours=2))
    w.alice_cleanup = session_with(cast, cast.alice, [
        *typed("rm -rf /fsx/scratch/old-run", "", 1.0, prompt="alice@hpc:~$ "),
        *typed("echo 'say \"hi\" AND NEAR(x y) col:val 100%_done back\\slash'", "say \"hi\" AND NEAR(x y) col:val "
               "100%_done back\\slash\r\n", 5.0, prompt="alice@hpc:~$ "),
        (20.0, "100xydone and 1000done: no wildcards here\r\n"),
    ], started=T0 + timedelta(hours=1), end_reason="idle")
    w.charlie_session = session_with(cast, cast.charlie, typed("rm -rf /fsx/other-tenant", "", 1.0), started=T0 + timedelta(hours=3))
    return w


def test_substrings_of_commands_and_output_are_found_with_their_line_time_and_kind(world):
    acme = SessionFilter(tenant_id=world.acme.pk)
    (hit,) = search("rm -rf /fsx", acme).hits
    assert (hit.session_id, hit.kind, hit.text) == (world.alice_cleanup.pk, "command", "alice@hpc:~$ rm -rf /fsx/scratch/old-run")
    assert hit.text[slice(*hit.spans[0])] == "rm -rf /fsx"
    assert 1.0 < hit.offset < 4.0 and hit.log_kind == "asciicast"
    (hit,) = search("--mem=", acme).hits
    assert hit.kind == "command" and hit.session_id == world.bob_job.pk and "train_model.py" in hit.text
    assert texts(search("train_model.py", acme)) == ["bob@hpc:~/run$ sbatch --mem=64G --time=2:00:00 train_model.py"]
    assert texts(search("Submitted batch job", acme)) == ["Submitted batch job 4242"]
    assert texts(search("HELD-OUT SET", acme)) == ["accuracy=0.93 on the held-out set"]  # colours gone, any case
    page = search("accuracy", acme)  # the command (ACCURACY.txt) before its output, both highlighted
    assert [(h.kind, h.text, h.spans) for h in page.hits] == [
        ("command", "bob@hpc:~/run$ cat results/ACCURACY.txt", ((27, 35),)), ("output", "accuracy=0.93 on the held-out set", ((0, 8),))]
    assert page.hits[0].offset < page.hits[1].offset


def test_the_query_is_literal_text(world):
    acme = SessionFilter(tenant_id=world.acme.pk)
    for query in ('"hi"', 'say "hi" AND', "NEAR(x y)", "col:val", "100%_done", "back\\slash", "%_d"):
        found = [h for h in search(query, acme).hits if h.kind == "output"]
        assert [h.text for h in found] == ['say "hi" AND NEAR(x y) col:val 100%_done back\\slash'], query
    assert search("hi* OR", acme).hits == []
    assert search("100_done", acme).hits == []  # neither % nor _ is a wildcard
    assert search("0%d", acme).hits == []


def test_a_match_across_two_lines_is_not_a_hit(cast):
    session_with(cast, cast.bob, [(1.0, "first line ends with abc\r\ndef starts the second\r\n")])
    assert search("abcdef", SessionFilter(tenant_id=cast.acme.pk)).hits == []
    assert len(search("abc", SessionFilter(tenant_id=cast.acme.pk)).hits) == 1


@pytest.mark.parametrize(("query", "message"), [
    ("ab", "at least 3"), ("   ", "at least 3"), ("x" * (MAX_QUERY_LENGTH + 1), "at most 200"),
    ("abc\ndef", "one line"), ("tab\there", "one line"),
])
def test_queries_too_short_too_long_or_not_one_line_are_refused(cast, query, message):
    with pytest.raises(SearchQueryError, match=message):
        search(query, SessionFilter(tenant_id=cast.acme.pk))


def test_the_longest_query_is_found(cast):
    line = "x" * 150 + " the end of a very long line " + "y" * 60
    session_with(cast, cast.bob, [(1.0, line + "\r\n")], cluster=cast.hpc)
    query = line[-MAX_QUERY_LENGTH:]
    assert texts(search(query, SessionFilter(tenant_id=cast.acme.pk))) == [line]


def test_visibility_filters(world):
    def found(**filters):
        return sorted({str(h.session_id) for h in search("rm -rf", SessionFilter(**filters)).hits}
                      | {str(h.session_id) for h in search("sbatch", SessionFilter(**filters)).hits})

    bob, alice = str(world.bob_job.pk), str(world.alice_cleanup.pk)
    acme, other = world.acme.pk, world.other.pk
    assert found(tenant_id=acme) == sorted([bob, alice])
    assert found(tenant_id=acme, user_id=world.bob.pk) == [bob]
    assert found(tenant_id=acme, user_id=world.alice.pk) == [alice]
    assert found(tenant_id=acme, user_id=world.charlie.pk) == []  # charlie's sessions are in the other tenant
    assert found(tenant_id=other) == [str(world.charlie_session.pk)]
    assert found(tenant_id=other, user_id=world.bob.pk) == []
    assert found(tenant_id=acme, cluster_id=world.hpc.pk) == sorted([bob, alice])
    assert found(tenant_id=acme, cluster_id=world.other_hpc.pk) == []
    assert found(tenant_id=acme, end_reason="idle") == [alice]
    assert found(tenant_id=acme, end_reason="revoked") == []
    hour = timedelta(hours=1)
    assert found(tenant_id=acme, started_after=T0 + 2 * hour) == [bob]  # bob's started exactly then
    assert found(tenant_id=acme, started_before=T0 + 2 * hour) == [alice]
    assert found(tenant_id=acme, started_after=T0 + hour, started_before=T0 + hour + timedelta(seconds=1)) == [alice]
    assert found(tenant_id=acme, started_after=T0 + 3 * hour) == []


def test_another_cluster_of_the_tenant(cast):
    gpu = ensure_cluster(tenant=cast.acme, slug="gpu", name="GPU")
    map_account(cluster=gpu, user=cast.bob, posix_username=cast.posix.pw_name, uid=cast.posix.pw_uid)
    on_gpu = session_with(cast, cast.bob, typed("nvidia-smi", "GPU 0: A100\r\n", 1.0), cluster=gpu)
    session_with(cast, cast.bob, typed("nvidia-smi", "No devices were found\r\n", 1.0), started=T0 + timedelta(minutes=5))
    page = search("nvidia-smi", SessionFilter(tenant_id=cast.acme.pk, cluster_id=gpu.pk))
    assert {h.session_id for h in page.hits} == {on_gpu.pk}


def test_pages_follow_the_cursor_newest_session_first_then_in_order(cast):
    sessions = []
    for n in range(3):  # 3 sessions of 150 lines: several chunks each
        lines = [(1.0 + i, f"step {i:03d} of session {n}: loss=0.{i:03d}\r\n") for i in range(150)]
        sessions.append(session_with(cast, cast.bob, lines, started=T0 + timedelta(minutes=n)))
    assert TranscriptChunk.objects.filter(session=sessions[0]).count() == -(-150 // CHUNK_LINES)
    everything = search("loss=", SessionFilter(tenant_id=cast.acme.pk), limit=500)
    assert everything.next_cursor is None and len(everything.hits) == 450
    expected = [(sessions[n].pk, float(1 + i)) for n in (2, 1, 0) for i in range(150)]
    assert [(h.session_id, h.offset) for h in everything.hits] == expected
    pages, cursor = [], None
    while True:
        page = search("LOSS=", SessionFilter(tenant_id=cast.acme.pk), cursor=cursor, limit=64)
        pages.append(page.hits)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert [len(p) for p in pages] == [64] * 7 + [2]
    assert [h for p in pages for h in p] == everything.hits
    # a cursor is tied to its search, and cannot be forged
    first = search("loss=", SessionFilter(tenant_id=cast.acme.pk), limit=10)
    with pytest.raises(SearchQueryError, match="another search"):
        search("step", SessionFilter(tenant_id=cast.acme.pk), cursor=first.next_cursor)
    with pytest.raises(SearchQueryError, match="another search"):
        search("loss=", SessionFilter(tenant_id=cast.acme.pk, user_id=cast.alice.pk), cursor=first.next_cursor)
    for forged in ("x", first.next_cursor[:-2] + "zz", "W1sxLDJdXQ:abc"):
        with pytest.raises(SearchQueryError, match="not valid"):
            search("loss=", SessionFilter(tenant_id=cast.acme.pk), cursor=forged)
    with pytest.raises(SearchQueryError):
        search("loss=", SessionFilter(tenant_id=cast.acme.pk), limit=0)


@pytest.mark.parametrize(("window", "scan_limit"), [(256, 4096), (2, 6), (1, 1)])
def test_common_and_rare_texts_whichever_way_the_chunks_are_read(cast, monkeypatch, window, scan_limit):
    """PostgreSQL reads a window of chunks in order, then maybe the trigram index (audit/search.py): small
    windows make every search take both ways. The pages are the same."""
    monkeypatch.setattr(audit_search, "WINDOW", window)
    monkeypatch.setattr(audit_search, "SCAN_LIMIT", scan_limit)
    sessions = []
    for n in range(6):
        lines = [(1.0 + i, f"common line {i:03d}" + (" and the rare one" if n == 0 and i == 99 else "") + "\r\n")
                 for i in range(100)]
        sessions.append(session_with(cast, cast.bob, lines, started=T0 + timedelta(minutes=n)))
    acme = SessionFilter(tenant_id=cast.acme.pk)
    (rare,) = search("the RARE one", acme).hits
    assert (rare.session_id, rare.offset) == (sessions[0].pk, 100.0)
    common, cursor = [], None
    while True:
        page = search("common line", acme, cursor=cursor, limit=70)
        common += [(h.session_id, h.offset) for h in page.hits]
        if not (cursor := page.next_cursor):
            break
    assert common == [(sessions[n].pk, 1.0 + i) for n in reversed(range(6)) for i in range(100)]
    assert search("line 042", SessionFilter(tenant_id=cast.acme.pk, user_id=cast.alice.pk)).hits == []


def test_an_ssm_log_has_no_times_and_both_logs_of_a_session_are_found(cast):
    ssm = (b'Script started on 2026-03-01 09:00:00+00:00 [TERM="xterm-256color" TTY="/dev/pts/1" COLUMNS="120" LINES="40"]\n'
           b"\x1b[?2004hbob@ip-10-0-0-5:~$ squeue --me\r\n\x1b[?2004l\r JOBID PARTITION NAME\r\n 4242 batch train\r\n"
           b"\x1b[?2004hbob@ip-10-0-0-5:~$ exit\r\n\x1b[?2004l\rexit\r\n\nScript done on 2026-03-01 09:05:00+00:00 "
           b'[COMMAND_EXIT_CODE="0"]\n')
    session = session_with(cast, cast.bob, None, log_kind="ssm_s3", data=ssm)
    index_recording(session, cast_bytes(typed("squeue --me", " JOBID PARTITION NAME\r\n", 2.0)), log_kind="asciicast")
    hits = search("squeue --me", SessionFilter(tenant_id=cast.acme.pk)).hits
    assert sorted((h.log_kind, h.kind, h.offset is None) for h in hits) == [("asciicast", "command", False),
                                                                            ("ssm_s3", "command", True)]
    assert search("Script started", SessionFilter(tenant_id=cast.acme.pk)).hits == []


def test_indexing_again_replaces_and_deleting_removes(cast):
    session = session_with(cast, cast.bob, [(1.0, "old words\r\n")])
    key = TranscriptSource.objects.get(session=session).key
    index_recording(session, cast_bytes([(1.0, "new words\r\n")]), log_kind="asciicast")
    assert texts(search("words", SessionFilter(tenant_id=cast.acme.pk))) == ["new words"]
    assert TranscriptSource.objects.get(session=session).key == key
    assert delete_session_index(session.pk, log_kind="ssm_s3") == 0
    assert delete_session_index(session.pk) == 1
    assert search("words", SessionFilter(tenant_id=cast.acme.pk)).hits == []
    assert not TranscriptSource.objects.filter(session=session).exists()
    # deleting the session deletes its index (and, on SQLite, the full-text index's rows: the triggers)
    other = session_with(cast, cast.bob, [(1.0, "gone with the session\r\n")])
    TerminalSession.objects.filter(pk=other.pk).delete()
    assert not TranscriptChunk.objects.exists()
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM audit_transcript_fts WHERE audit_transcript_fts MATCH '\"the\"'")
            assert cursor.fetchone() == (0,)


def test_sessions_started_in_the_same_second_keep_apart(cast):
    same = [session_with(cast, cast.bob, [(1.0, f"same second {n}\r\n")], started=T0) for n in range(3)]
    assert len({TranscriptSource.objects.get(session=s).key for s in same}) == 3
    assert sorted(texts(search("same second", SessionFilter(tenant_id=cast.acme.pk)))) == [f"same second {n}" for n in range(3)]


def test_a_corrupt_recording_is_indexed_as_far_as_it_goes(cast):
    account = ClusterAccount.objects.get(cluster=cast.hpc, user=cast.bob)
    session = TerminalSession.objects.create(user=cast.bob, cluster=cast.hpc, account=account, posix_username="x", backend="local")
    data = cast_bytes([(1.0, "before the damage\r\n")]) + b'[2.0, "o", "lost\\r\\n"\n' + b'[3.0, "o", "after the damage\\r\\n"]\n[4.0, "o", "cut sho'
    result = index_recording(session, data, log_kind="asciicast")
    assert (result.complete, result.lines, result.chunks, result.bytes) == (False, 2, 1, len(data))
    assert "line 3" in result.note and "truncated" in result.note
    assert texts(search("the damage", SessionFilter(tenant_id=cast.acme.pk))) == ["before the damage", "after the damage"]
    empty = index_recording(session, b"", log_kind="asciicast")
    assert (empty.complete, empty.lines, empty.chunks) == (False, 0, 0) and "empty" in empty.note


def test_the_same_tests_pass_on_sqlite(tmp_path):
    """This file again, in a child pytest whose database is SQLite: the search through FTS5."""
    if connection.vendor == "sqlite":
        pytest.fail("run by the PostgreSQL run only (deselected in the child)")
    env = {**os.environ, "CLUSTERRA_DATABASE_URL": f"sqlite:///{tmp_path / 'search.sqlite3'}",
           "CLUSTERRA_DATA_DIR": str(tmp_path / "data")}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                          "-k", "not test_the_same_tests_pass_on_sqlite"],
                         cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout
