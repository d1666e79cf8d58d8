"""Security-relevant actions write audit events (issue 11 §1): password sign-in with the reason for a
refusal (never the password), sign-out, and data that is stored exactly as it is hashed."""

import uuid
from datetime import UTC, datetime

import pytest
from django.test import Client
from django.urls import reverse

from audit.chain import event_hash, seal
from audit.models import AuditEvent
from audit.services import record_event
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

LOGIN = reverse("accounts:login")


@pytest.fixture
def cast(cast, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    for user in (cast.alice, cast.bob, cast.charlie):
        user.set_password(PASSWORD)
        user.save(update_fields=["password"])
    return cast


def sign_in(email, password, address="198.51.100.4"):
    return Client().post(LOGIN, {"username": email, "password": password}, REMOTE_ADDR=address)


def events(action):
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


def test_password_sign_in_success_and_each_refusal_reason(cast):
    assert sign_in("bob@acme.test", PASSWORD).status_code == 302
    [success] = events("auth.sign_in")
    assert (success.tenant, success.actor, success.client_address) == (cast.acme, cast.bob, "198.51.100.4")
    assert success.data == {"method": "password", "email": "bob@acme.test"}

    sign_in("bob@acme.test", "not-the-password")
    sign_in("nobody@acme.test", "whatever-secret")
    cast.acme.local_signin_enabled = False
    cast.acme.save(update_fields=["local_signin_enabled"])
    sign_in("alice@acme.test", PASSWORD)
    refused = events("auth.sign_in.refused")
    assert [(e.tenant, e.data["email"], e.data["reason"]) for e in refused] == [
        (cast.acme, "bob@acme.test", "wrong password"),
        (None, "nobody@acme.test", "no account with this email"),  # no tenant: the system chain
        (cast.acme, "alice@acme.test", "password sign-in is turned off for this person's tenants"),
    ]
    stored = repr(list(AuditEvent.objects.values_list("data", flat=True)))
    assert "not-the-password" not in stored and "whatever-secret" not in stored and PASSWORD not in stored


def test_a_locked_sign_in_is_refused_with_that_reason(cast, settings):
    for _ in range(settings.SIGNIN_ACCOUNT_LIMIT):
        sign_in("charlie@other.test", "wrong-again")
    sign_in("charlie@other.test", PASSWORD)
    last = events("auth.sign_in.refused")[-1]
    assert last.tenant == cast.other and last.data["reason"] == "locked: too many failed sign-ins"
    assert not events("auth.sign_in")


def test_sign_out_is_recorded(cast):
    client = Client()
    client.force_login(cast.bob)
    client.post(reverse("accounts:logout"))
    [event] = events("auth.sign_out")
    assert event.actor == cast.bob


def test_event_data_is_stored_as_hashed(cast):
    """UUIDs and dates become strings before hashing, so the hash holds after the database round trip."""
    session_id, when = uuid.uuid4(), datetime(2026, 12, 2, 4, 5, 6, tzinfo=UTC)
    event = record_event("test.types", tenant=cast.acme, data={"session": session_id, "at": when, "n": 1.5},
                         client_address="::FFFF:192.0.2.1")
    seal(f"tenant-{cast.acme.pk}")
    stored = AuditEvent.objects.get(pk=event.pk)
    assert stored.data == {"session": str(session_id), "at": "2026-12-02T04:05:06Z", "n": 1.5}
    assert stored.hash == event_hash(stored)
