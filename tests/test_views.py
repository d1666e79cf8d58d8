"""Pages: sign-in, cluster list, terminal page, tenant admin's session list — with the authz cast."""

import pytest
from django.urls import reverse

from audit.models import AuditEvent
from terminal.models import TerminalSession
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def test_login_with_email_and_password(client, cast):
    response = client.post(reverse("accounts:login"), {"username": "BOB@acme.test", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == reverse("home")
    from django.test import Client

    bad = Client().post(reverse("accounts:login"), {"username": "bob@acme.test", "password": "wrong-password"})
    assert bad.status_code == 200 and b"correct email" in bad.content


def test_pages_need_sign_in(client, cast):
    for url in ("/", "/t/acme/c/hpc/", "/t/acme/c/hpc/terminal/", "/t/acme/sessions/"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), url


def test_home_lists_only_own_tenants_clusters(client, cast, django_assert_max_num_queries):
    client.force_login(cast.bob)
    with django_assert_max_num_queries(9):  # the dashboard: + the job cache twice per account, + live sessions
        response = client.get("/")
    assert b"Acme HPC" in response.content and b"Other HPC" not in response.content
    assert b"/t/acme/c/hpc/terminal/" in response.content


def test_terminal_page(client, cast):
    client.force_login(cast.bob)
    response = client.get("/t/acme/c/hpc/terminal/?cwd=/tmp")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-ws-path="/ws/t/acme/c/hpc/terminal/"' in html and 'data-cwd="/tmp"' in html
    assert "vendor/xterm/xterm.mjs" in html and "cdn" not in html.lower()


def test_terminal_page_of_another_tenant_is_404(client, cast):
    client.force_login(cast.charlie)
    assert client.get("/t/acme/c/hpc/terminal/").status_code == 404
    assert client.get("/t/acme/c/hpc/").status_code == 404


def test_terminal_page_without_active_account_is_403(client, cast):
    client.force_login(cast.rita)
    assert client.get("/t/acme/c/hpc/terminal/").status_code == 403


def test_renderer_query_sets_the_preference(client, cast):
    client.force_login(cast.bob)
    response = client.get("/t/acme/c/hpc/terminal/?renderer=dom")
    assert 'data-renderer="dom"' in response.content.decode()
    cast.bob.refresh_from_db()
    assert cast.bob.terminal_renderer == "dom"
    assert AuditEvent.objects.filter(action="account.preferences.update", actor=cast.bob).exists()


def test_static_files_are_served_from_the_project(client, cast):
    response = client.get("/static/vendor/xterm/xterm.mjs")
    assert response.status_code == 200
    assert b"".join(response.streaming_content)[:200]


def _live_session(cast):
    from terminal.actions import open_terminal_session

    return open_terminal_session(user=cast.bob, tenant_slug="acme", cluster_slug="hpc", working_directory=None,
                                 client_address="127.0.0.1", user_agent="test")


def test_tenant_admin_sees_and_terminates_live_sessions(client, cast):
    session = _live_session(cast)
    client.force_login(cast.alice)
    page = client.get("/t/acme/sessions/")
    assert page.status_code == 200 and b"bob@acme.test" in page.content
    response = client.post(f"/t/acme/sessions/{session.pk}/terminate/")
    assert response.status_code == 302
    event = AuditEvent.objects.get(action="terminal.session.revoke")
    assert event.actor == cast.alice and event.target_id == str(session.pk)


def test_members_and_outsiders_cannot_see_the_session_list(client, cast):
    session = _live_session(cast)
    for user in (cast.bob, cast.charlie):
        client.force_login(user)
        assert client.get("/t/acme/sessions/").status_code == 404
        assert client.post(f"/t/acme/sessions/{session.pk}/terminate/").status_code == 404
    # charlie is admin of his own tenant, but bob's session is not in it.
    client.force_login(cast.charlie)
    assert client.post(f"/t/other/sessions/{session.pk}/terminate/").status_code == 404


def test_terminate_needs_post_and_csrf(cast):
    from django.test import Client

    session = _live_session(cast)
    csrf_client = Client(enforce_csrf_checks=True)
    csrf_client.force_login(cast.alice)
    assert csrf_client.get(f"/t/acme/sessions/{session.pk}/terminate/").status_code == 405
    assert csrf_client.post(f"/t/acme/sessions/{session.pk}/terminate/").status_code == 403


def test_open_and_finish_write_audit_events(cast):
    from terminal.actions import finish_terminal_session

    session = _live_session(cast)
    assert finish_terminal_session(session, reason="closed", bytes_in=3, bytes_out=10)
    assert not finish_terminal_session(session, reason="idle")  # only once
    session.refresh_from_db()
    assert session.end_reason == "closed" and session.bytes_out == 10
    actions = list(AuditEvent.objects.filter(target_id=str(session.pk)).order_by("id").values_list("action", flat=True))
    assert actions == ["terminal.session.start", "terminal.session.end"]


def test_close_stale_sessions(cast):
    from terminal.processes import close_stale_sessions

    session = _live_session(cast)
    assert close_stale_sessions() == 1
    session.refresh_from_db()
    assert session.end_reason == TerminalSession.EndReason.SERVER_SHUTDOWN


def test_audit_events_are_append_only(cast):
    event = AuditEvent.objects.first()
    with pytest.raises(RuntimeError):
        event.save()
    with pytest.raises(RuntimeError):
        event.delete()


def test_api_tokens_page_creates_shows_once_and_revokes(client, cast):
    from accounts.models import ApiToken

    client.force_login(cast.bob)
    created = client.post("/accounts/tokens/", {"name": "laptop", "tenant": cast.acme.pk, "days": 30})
    html = created.content.decode()
    token = ApiToken.objects.get(user=cast.bob, name="laptop")
    assert f"ctk_{token.prefix}_" in html and token.secret_hash not in html
    assert (token.expires_at - token.created_at).days in (29, 30)
    listing = client.get("/accounts/tokens/").content.decode()
    assert f"ctk_{token.prefix}_…" in listing and html.split(f"ctk_{token.prefix}_")[1].split("<")[0] not in listing
    # Not a member of "other": the form refuses that tenant.
    refused = client.post("/accounts/tokens/", {"name": "x", "tenant": cast.other.pk, "days": 30})
    assert refused.status_code == 200 and not ApiToken.objects.filter(name="x").exists()
    client.post(f"/accounts/tokens/{token.pk}/revoke/")
    token.refresh_from_db()
    assert token.revoked_at is not None
    client.force_login(cast.alice)
    assert client.post(f"/accounts/tokens/{token.pk}/revoke/").status_code == 404  # not hers
