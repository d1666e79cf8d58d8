"""GET /v1/audit/events and /v1/audit/search (issue 11 §6): the pages' filters and visibility, cursors, errors.

The sessions are the ones of tests/test_audit_views.py (real sessions, real recordings, the real indexer).
"""

import pytest
from django.test import Client

from accounts.models import Membership
from accounts.services import create_api_token, set_membership
from audit.services import record_event
from tests.test_audit_views import recorded_session, shell, world  # noqa: F401 (world is a fixture)

pytestmark = pytest.mark.django_db

EVENTS, SEARCH = "/v1/audit/events", "/v1/audit/search"

# Every status each audit operation answers (tests/test_api.py checks the OpenAPI document against these
# too); test_every_documented_status_is_answered makes each happen, but 429 (tests/test_signin_throttle.py).
EXPECTED_STATUSES = {
    ("get", EVENTS): {200, 400, 401, 403, 404, 429},
    ("get", SEARCH): {200, 400, 401, 403, 404, 429},
}


def bearer(token: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


@pytest.fixture
def api(world):  # noqa: F811
    c = world
    c.client = Client()
    c.bob_tok = bearer(create_api_token(user=c.bob, tenant=c.acme, name="test")[1])
    c.alice_tok = bearer(create_api_token(user=c.alice, tenant=c.acme, name="test")[1])
    c.charlie_tok = bearer(create_api_token(user=c.charlie, tenant=c.other, name="test")[1])
    return c


def get(api, url, token, **params):
    return api.client.get(url, params, **token)


def texts(response) -> set[str]:
    assert response.status_code == 200, response.content
    return {hit["text"] for hit in response.json()["items"]}


def test_search_shows_each_viewer_what_they_may_see(api):
    bob = get(api, SEARCH, api.bob_tok, q="needle").json()["items"]
    assert bob and all(hit["session"]["person"] == "bob@acme.test" for hit in bob)
    hit = next(h for h in bob if h["kind"] == "command")
    assert hit["text"].endswith("echo needle-bob") and hit["log_kind"] == "asciicast"
    assert 83 <= hit["offset"] < 84 and hit["text"][slice(*hit["spans"][0])].lower() == "needle"
    session = hit["session"]
    assert session["id"] == str(api.bob_session.pk) and session["cluster"] == "hpc" and session["cluster_id"] == api.hpc.pk
    assert session["end_reason"] == "closed" and session["duration"] is not None and session["log_flags"] == []
    assert hit["playback_url"].startswith(f"/t/acme/audit/sessions/{api.bob_session.pk}/?t=83")
    alice = get(api, SEARCH, api.alice_tok, q="needle").json()["items"]
    assert {h["session"]["person"] for h in alice} == {"alice@acme.test", "bob@acme.test"}
    charlie = get(api, SEARCH, api.charlie_tok, q="needle").json()["items"]
    assert {h["session"]["person"] for h in charlie} == {"charlie@other.test"}
    # The same filters as the page.
    assert {h["session"]["person"] for h in get(api, SEARCH, api.alice_tok, q="needle", person="bob@acme.test").json()["items"]} == {"bob@acme.test"}
    assert texts(get(api, SEARCH, api.alice_tok, q="needle", end_reason="idle")) == set()
    assert texts(get(api, SEARCH, api.alice_tok, q="needle", cluster=api.other_hpc.pk)) == set()
    assert texts(get(api, SEARCH, api.alice_tok, q="needle", until="2001-01-01")) == set()
    assert texts(get(api, SEARCH, api.alice_tok, q="needle", since="2001-01-01T00:00:00Z")) >= {"needle-bob", "needle-alice"}


def test_another_tenant_is_a_404_and_a_member_cannot_look_at_others(api):
    for url in (EVENTS, SEARCH):
        response = get(api, url, api.charlie_tok, tenant="acme", q="needle")
        assert response.status_code == 404 and response.json() == {"detail": "No such tenant."}
    refused = get(api, SEARCH, api.bob_tok, q="needle", person="alice@acme.test")
    assert refused.status_code == 403 and "Only tenant admins" in refused.json()["detail"]
    refused = get(api, EVENTS, api.bob_tok, actor="alice")
    assert refused.status_code == 403 and "Only tenant admins" in refused.json()["detail"]


def test_events_are_the_tenants_for_admins_and_ones_own_for_members(api):
    record_event("person.suspend", tenant=api.acme, actor=api.alice, data={"user": "bob@acme.test"})
    record_event("secret.other", tenant=api.other, actor=api.charlie)
    bob = get(api, EVENTS, api.bob_tok).json()["items"]
    assert bob and {e["actor"] for e in bob} == {"bob@acme.test"}
    assert {"sequence", "prev_hash", "hash", "created_at", "action", "target_type", "target_id", "data"} <= set(bob[0])
    alice = get(api, EVENTS, api.alice_tok).json()["items"]
    assert alice[0]["action"] == "person.suspend" and "secret.other" not in {e["action"] for e in alice}  # newest first
    assert [e["id"] for e in alice] == sorted((e["id"] for e in alice), reverse=True)
    assert {e["action"] for e in get(api, EVENTS, api.alice_tok, action="terminal.session.").json()["items"]} == {
        "terminal.session.start", "terminal.session.end"}
    assert {e["action"] for e in get(api, EVENTS, api.alice_tok, action="terminal.session.end").json()["items"]} == {"terminal.session.end"}
    target = get(api, EVENTS, api.alice_tok, target=f"terminal.terminalsession:{api.bob_session.pk}").json()["items"]
    assert [e["action"] for e in target] == ["terminal.session.end", "terminal.session.start"]
    assert get(api, EVENTS, api.alice_tok, actor="bob@", until="2001-01-01").json()["items"] == []


def test_cursors_walk_every_page_once(api):
    for n in range(5):
        record_event("bulk.event", tenant=api.acme, actor=api.alice, data={"n": n})
    seen, cursor = [], None
    while True:
        page = get(api, EVENTS, api.alice_tok, action="bulk.event", limit=2, **({"cursor": cursor} if cursor else {})).json()
        seen += [e["data"]["n"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [4, 3, 2, 1, 0]
    recorded_session(api.bob, "acme", shell("echo needle-two", "needle-two"))
    first = get(api, SEARCH, api.bob_tok, q="needle", limit=1).json()
    assert len(first["items"]) == 1 and first["next_cursor"]
    rest = get(api, SEARCH, api.bob_tok, q="needle", limit=200, cursor=first["next_cursor"]).json()
    everything = texts(get(api, SEARCH, api.bob_tok, q="needle", limit=200))
    assert {h["text"] for h in first["items"] + rest["items"]} == everything


@pytest.mark.parametrize("params, detail", [
    ({"q": "ab"}, "q: String should have at least 3 characters"),
    ({"q": "x" * 201}, "q: String should have at most 200 characters"),
    ({"q": "   "}, "Search for at least 3 characters."),  # the search's own check: spaces only
    ({}, "q: Field required"),
    ({"q": "needle", "limit": 0}, "limit: Input should be greater than or equal to 1"),
    ({"q": "needle", "limit": 201}, "limit: Input should be less than or equal to 200"),
    ({"q": "needle", "end_reason": "bored"}, "end_reason must be one of closed, idle"),
    ({"q": "needle", "person": "nobody@acme.test"}, "person: no one with this email"),
    ({"q": "nee\x00dle"}, "q: Value error, must not contain NUL characters"),
    ({"q": "needle", "since": "yesterday"}, "since: Input should be a valid datetime"),
])
def test_bad_searches_are_400_with_a_clear_detail(api, params, detail):
    response = get(api, SEARCH, api.alice_tok, **params)
    assert response.status_code == 400, response.content
    assert detail in response.json()["detail"] and set(response.json()) <= {"detail", "field"}


def test_a_bad_cursor_is_400(api):
    for url, params in ((EVENTS, {}), (SEARCH, {"q": "needle"})):
        response = get(api, url, api.alice_tok, cursor="not-a-cursor", **params)
        assert response.status_code == 400 and "not valid" in response.json()["detail"], response.content


def test_a_signed_in_browser_names_the_tenant_when_it_has_several(api):
    client = Client()
    client.force_login(api.bob)
    assert client.get(EVENTS).status_code == 200  # one tenant: that one
    set_membership(tenant=api.other, user=api.bob, role=Membership.Role.MEMBER)
    response = client.get(EVENTS)
    assert response.status_code == 400 and "tenant=<slug>" in response.json()["detail"]
    assert {e["actor"] for e in client.get(EVENTS, {"tenant": "acme"}).json()["items"]} == {"bob@acme.test"}
    assert client.get(SEARCH, {"q": "needle", "tenant": "other"}).json()["items"] == []  # no sessions of his there


def test_openapi_documents_both_operations_with_their_schemas(api):
    document = api.client.get("/v1/openapi.json").json()
    events = document["paths"][EVENTS]["get"]
    search = document["paths"][SEARCH]["get"]
    assert events["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/EventPage"}
    assert search["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/SearchPage"}
    assert {p["name"] for p in search["parameters"]} >= {"q", "person", "cluster", "since", "until", "end_reason", "cursor", "limit", "tenant"}
    assert {p["name"] for p in events["parameters"]} >= {"action", "actor", "target", "since", "until", "cursor", "limit", "tenant"}
    hit = document["components"]["schemas"]["HitOut"]["properties"]
    assert {"session", "offset", "kind", "text", "spans", "playback_url"} <= set(hit)


def test_every_documented_status_is_answered(api):
    tok, member = api.alice_tok, api.bob_tok
    cases = {
        ("get", EVENTS): {
            200: lambda: get(api, EVENTS, tok),
            400: lambda: get(api, EVENTS, tok, limit="x"),
            401: lambda: api.client.get(EVENTS),
            403: lambda: get(api, EVENTS, member, actor="alice"),
            404: lambda: get(api, EVENTS, tok, tenant="other")},
        ("get", SEARCH): {
            200: lambda: get(api, SEARCH, tok, q="needle"),
            400: lambda: get(api, SEARCH, tok, q="ab"),
            401: lambda: api.client.get(SEARCH, {"q": "needle"}),
            403: lambda: get(api, SEARCH, member, q="needle", person="alice@acme.test"),
            404: lambda: get(api, SEARCH, tok, q="needle", tenant="nosuch")},
    }
    answers = {(operation, status): make() for operation, by_status in cases.items() for status, make in by_status.items()}
    assert {key: response.status_code for key, response in answers.items()} == {key: key[1] for key in answers}
    assert all(set(response.json()) <= {"detail", "field"} for (_, status), response in answers.items() if status >= 400)
    assert set(answers) == {(op, s) for op, statuses in EXPECTED_STATUSES.items() for s in statuses if s != 429}
