"""Throttling of failed sign-ins (accounts/throttle.py) with the real Redis cache: the sign-in form, the admin
sign-in, API tokens, unlocking, and a cache that does not answer.

Each test has keys of its own in the cache (tests/conftest.py _own_cache_keys). Time moves through the
module's clock, never by sleeping.
"""

import socket
import time
from datetime import UTC, datetime
from io import StringIO

import pytest
import redis
from django.conf import settings as django_settings
from django.contrib.auth import authenticate
from django.core.management import CommandError, call_command
from django.test import Client, RequestFactory
from django.urls import reverse

from accounts import throttle
from accounts.services import create_api_token
from audit.models import AuditEvent
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

LOGIN = reverse("accounts:login")
LOCKED = "Too many failed sign-in attempts. Try again in 15 minutes or ask your administrator."
INVALID = "Please enter a correct email and password."


def sign_in(email, password, address="203.0.113.10", url=LOGIN):
    return Client().post(url, {"username": email, "password": password}, REMOTE_ADDR=address)


def outcome(response) -> tuple:
    """What a client can see of a sign-in attempt: status, which message, Retry-After."""
    text = response.content.decode()
    message = "locked" if "Too many failed sign-in attempts. Try again in" in text else "invalid" if INVALID in text else "other"
    return response.status_code, message if response.status_code != 302 else "signed in", response.get("Retry-After")


@pytest.fixture
def cast(cast, settings):
    """The cast, with a fast password hasher (dozens of sign-ins per test)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    for user in (cast.alice, cast.bob, cast.rita, cast.charlie):
        user.set_password(PASSWORD)
        user.save(update_fields=["password"])
    return cast


@pytest.fixture(autouse=True)
def later(monkeypatch):
    """The throttle's clock stands still (Retry-After does not tick down on a slow machine); later(seconds)
    moves it forward."""
    now = [time.time()]
    monkeypatch.setattr(throttle, "clock", lambda: now[0])

    def move(seconds: float):
        now[0] += seconds
    return move


def lockouts(**data):
    return [e for e in AuditEvent.objects.filter(action="auth.lockout") if all(e.data.get(k) == v for k, v in data.items())]


# --- the sign-in form ----------------------------------------------------------------------------
def test_thirty_wrong_passwords_lock_the_account_and_the_right_one_waits_for_the_cool_off(cast, later):
    outcomes = [outcome(sign_in("alice@acme.test", f"wrong-{i}")) for i in range(30)]
    assert outcomes[:5] == [(200, "invalid", None)] * 5
    assert outcomes[5:] == [(429, "locked", "900")] * 25
    # The right password is refused too, without being checked, with the same message.
    assert outcome(sign_in("alice@acme.test", PASSWORD)) == (429, "locked", "900")
    assert outcome(sign_in("ALICE@acme.test ", PASSWORD, address="198.51.100.1")) == (429, "locked", "900")
    # One audit event for the lockout, none for the refused attempts.
    [event] = lockouts()
    assert event.data["kind"] == "login" and event.data["scope"] == "account" and event.data["email"] == "alice@acme.test"
    assert event.tenant == cast.acme and event.target_id == str(cast.alice.pk) and event.client_address == "203.0.113.10"
    later(600)
    response = sign_in("alice@acme.test", PASSWORD)
    assert outcome(response)[:2] == (429, "locked") and "Try again in 5 minutes" in response.content.decode()
    later(301)
    assert outcome(sign_in("alice@acme.test", PASSWORD)) == (302, "signed in", None)
    # After the cool-off the account has a fresh allowance, and a new lockout is a new event.
    for i in range(5):
        assert outcome(sign_in("alice@acme.test", f"wrong-{i}"))[:2] == (200, "invalid")
    assert outcome(sign_in("alice@acme.test", PASSWORD))[:2] == (429, "locked")
    assert len(lockouts()) == 2


def test_an_unknown_email_behaves_exactly_like_a_known_one(cast):
    known = [outcome(sign_in("bob@acme.test", "wrong-password", address="203.0.113.20")) for _ in range(8)]
    unknown = [outcome(sign_in("nobody@acme.test", "wrong-password", address="203.0.113.21")) for _ in range(8)]
    assert known == unknown == [(200, "invalid", None)] * 5 + [(429, "locked", "900")] * 3
    assert [e.data["email"] for e in lockouts(scope="account")] == ["nobody@acme.test", "bob@acme.test"]


def test_the_address_limit_counts_across_emails(cast):
    for i in range(20):
        assert outcome(sign_in(f"guess{i}@acme.test", "wrong-password", address="198.51.100.7"))[:2] == (200, "invalid")
    # The 21st attempt from that address is refused whoever it is for, even with the right password.
    assert outcome(sign_in("bob@acme.test", PASSWORD, address="198.51.100.7")) == (429, "locked", "900")
    assert outcome(sign_in("bob@acme.test", PASSWORD, address="198.51.100.8"))[:2] == (302, "signed in")
    [event] = lockouts()
    assert event.data["scope"] == "address" and event.data["address"] == "198.51.100.7" and event.tenant is None
    assert event.client_address == "198.51.100.7" and "email" not in event.data


def test_ipv6_clients_are_counted_per_64(cast, settings):
    settings.SIGNIN_ADDRESS_LIMIT = 3
    for i in range(3):
        assert outcome(sign_in(f"g{i}@acme.test", "wrong-password", address=f"2001:db8:1:2::{i + 1}"))[0] == 200
    assert outcome(sign_in("bob@acme.test", PASSWORD, address="2001:db8:1:2:ffff::9"))[0] == 429
    assert outcome(sign_in("bob@acme.test", PASSWORD, address="2001:db8:1:3::1"))[0] == 302


def test_a_successful_sign_in_clears_the_account_counter(cast):
    for _ in range(4):
        assert outcome(sign_in("bob@acme.test", "wrong-password"))[0] == 200
    assert outcome(sign_in("bob@acme.test", PASSWORD))[0] == 302
    for _ in range(4):
        assert outcome(sign_in("bob@acme.test", "wrong-password"))[0] == 200
    assert outcome(sign_in("bob@acme.test", PASSWORD))[0] == 302  # 8 failures in the window, never 5 in a row
    for _ in range(5):
        assert outcome(sign_in("bob@acme.test", "wrong-password"))[0] == 200
    assert outcome(sign_in("bob@acme.test", PASSWORD))[0] == 429


def test_the_counters_are_in_the_shared_redis_cache(cast):
    """What every daphne process reads: keys under the cache's prefix in Redis itself."""
    sign_in("bob@acme.test", "wrong-password")
    config = django_settings.CACHES["default"]
    client = redis.Redis.from_url(config["LOCATION"])
    keys = client.keys(f"{config['KEY_PREFIX']}:*")
    assert len(keys) == 2 and all(b":signin:login:" in key for key in keys)  # the email's and the address's counter
    assert not any(b"bob" in key for key in keys)  # hashed: no email in the key space
    assert all(0 < client.ttl(key) <= 900 for key in keys)


def test_the_admin_sign_in_is_throttled_too(cast):
    url = reverse("admin:login")
    for _ in range(5):
        assert LOCKED not in sign_in("alice@acme.test", "wrong-password", url=url).content.decode()
    assert LOCKED in sign_in("alice@acme.test", PASSWORD, url=url).content.decode()
    assert outcome(sign_in("alice@acme.test", PASSWORD))[:2] == (429, "locked")  # one counter for both pages


def test_other_backends_such_as_oidc_are_never_throttled(cast, settings):
    """The throttle is in the password forms, not in authenticate(): an SSO backend still signs in a
    locked account from a locked address (password throttling for SSO is the IdP's)."""
    settings.SIGNIN_ADDRESS_LIMIT = 5
    for _ in range(6):
        sign_in("alice@acme.test", "wrong-password")
    assert throttle.lockout_status("alice@acme.test") is not None
    assert throttle.current_lock(throttle.LOGIN, None, "203.0.113.10") is not None
    settings.AUTHENTICATION_BACKENDS = ["tests.test_signin_throttle.FakeIdPBackend", *settings.AUTHENTICATION_BACKENDS]
    request = RequestFactory().get("/oidc/callback/", REMOTE_ADDR="203.0.113.10")
    assert authenticate(request, idp_code="good") == cast.alice


class FakeIdPBackend:
    def authenticate(self, request, idp_code=None):
        from accounts.models import User

        return User.objects.get(email="alice@acme.test") if idp_code == "good" else None

    def get_user(self, user_id):
        return None


# --- unlocking -----------------------------------------------------------------------------------
def test_unlock_command(cast):
    for _ in range(6):
        sign_in("bob@acme.test", "wrong-password")
    out = StringIO()
    call_command("unlock_signin", "bob@acme.test", "--status", stdout=out)
    assert "bob@acme.test: locked until" in out.getvalue()
    out = StringIO()
    call_command("unlock_signin", "BOB@acme.test", stdout=out)
    assert out.getvalue().strip() == "Unlocked."
    assert outcome(sign_in("bob@acme.test", PASSWORD))[0] == 302
    [event] = AuditEvent.objects.filter(action="auth.unlock")
    assert event.data == {"was_locked": True, "email": "bob@acme.test"} and event.actor_label == "system"
    assert event.target_id == str(cast.bob.pk)
    # An address, for every kind of sign-in from it.
    for i in range(21):
        sign_in(f"g{i}@acme.test", "wrong-password", address="192.0.2.44")
    assert outcome(sign_in("bob@acme.test", PASSWORD, address="192.0.2.44"))[0] == 429
    out = StringIO()
    call_command("unlock_signin", "--address", "192.0.2.44", stdout=out)
    assert out.getvalue().strip() == "Unlocked."
    assert outcome(sign_in("bob@acme.test", PASSWORD, address="192.0.2.44"))[0] == 302
    out = StringIO()
    call_command("unlock_signin", "nobody@acme.test", stdout=out)
    assert out.getvalue().strip().startswith("Was not locked")
    with pytest.raises(CommandError, match="not an IP address"):
        call_command("unlock_signin", "--address", "example.org")
    with pytest.raises(CommandError, match="Give an email"):
        call_command("unlock_signin")


def test_unlock_and_lockout_status_for_the_admin_console(cast, later):
    assert throttle.lockout_status("charlie@other.test") is None
    for _ in range(5):
        sign_in("charlie@other.test", "wrong-password")
    until = throttle.lockout_status("Charlie@other.test")
    assert abs((until - datetime.now(UTC)).total_seconds() - 900) < 30
    later(100)
    assert throttle.lockout_status("charlie@other.test") == until  # the end does not move
    assert throttle.unlock(email="charlie@other.test", actor=cast.charlie, tenant=cast.other, client_address="192.0.2.1")
    assert throttle.lockout_status("charlie@other.test") is None
    event = AuditEvent.objects.get(action="auth.unlock")
    assert event.actor == cast.charlie and event.tenant == cast.other and event.client_address == "192.0.2.1"
    assert not throttle.unlock(email="charlie@other.test", actor=cast.charlie)
    with pytest.raises(ValueError):
        throttle.unlock(actor=cast.charlie)


# --- API tokens ----------------------------------------------------------------------------------
def bearer(token: str, address: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}", "REMOTE_ADDR": address}


def test_bad_api_tokens_get_429_with_retry_after_and_one_audit_event(cast):
    _, good = create_api_token(user=cast.bob, tenant=cast.acme, name="t")
    client = Client()
    bad = ["garbage", "ctk_nope_nope", "ctk_a\x00b_c", *(f"ctk_{i:012x}_secret" for i in range(17))]
    assert [client.get("/v1/clusters", **bearer(t, "203.0.113.50")).status_code for t in bad] == [401] * 20
    for token in ("ctk_0123456789ab_x", good):  # refused before the token is checked, good or bad
        response = client.get("/v1/clusters", **bearer(token, "203.0.113.50"))
        assert response.status_code == 429 and response["Retry-After"] == "900"
        assert response.json() == {"detail": LOCKED}
    assert client.get("/v1/clusters", **bearer(good, "203.0.113.51")).status_code == 200
    [event] = lockouts()
    assert event.data == {"kind": "api_token", "scope": "address", "address": "203.0.113.50", "until": event.data["until"]}
    # The web sign-in from that address is a kind of its own.
    assert outcome(sign_in("bob@acme.test", PASSWORD, address="203.0.113.50"))[0] == 302


def test_wrong_secrets_for_one_token_prefix_lock_that_token(cast):
    token, good = create_api_token(user=cast.bob, tenant=cast.acme, name="ci")
    client = Client()
    for i in range(5):
        assert client.get("/v1/clusters", **bearer(f"ctk_{token.prefix}_wrong{i}", f"192.0.2.{i + 1}")).status_code == 401
    response = client.get("/v1/clusters", **bearer(good, "192.0.2.99"))
    assert response.status_code == 429 and int(response["Retry-After"]) > 0
    [event] = lockouts()
    assert event.data["scope"] == "account" and event.data["key"] == token.prefix
    assert event.tenant == cast.acme and event.target_id == str(token.pk)
    out = StringIO()
    call_command("unlock_signin", "--token-prefix", token.prefix, stdout=out)
    assert out.getvalue().strip() == "Unlocked."
    assert client.get("/v1/clusters", **bearer(good, "192.0.2.99")).status_code == 200


def test_check_and_count_for_other_kinds_such_as_scim(cast, settings):
    settings.SIGNIN_ACCOUNT_LIMIT = 2
    calls = []

    def verify(ok):
        calls.append(ok)
        return "token" if ok else None

    assert throttle.check_and_count(throttle.SCIM, "k1", "192.0.2.5", lambda: verify(False), tenant=cast.acme) is None
    assert throttle.check_and_count(throttle.SCIM, "k1", "192.0.2.5", lambda: verify(True)) == "token"  # clears k1
    for _ in range(2):
        assert throttle.check_and_count(throttle.SCIM, "k1", "192.0.2.5", lambda: verify(False), tenant=cast.other) is None
    with pytest.raises(throttle.Throttled) as refused:
        throttle.check_and_count(throttle.SCIM, "k1", "192.0.2.6", lambda: verify(True))
    assert calls == [False, True, False, False] and refused.value.lock.retry_after == 900
    [event] = lockouts()
    assert event.tenant == cast.other  # the tenant given with the failure that locked
    assert event.data["kind"] == "scim" and event.data["key"] == "k1"
    assert throttle.lockout_status(kind=throttle.SCIM, key="k1") is not None
    assert throttle.check_and_count(throttle.LOGIN, "k1", "192.0.2.6", lambda: "other kind") == "other kind"


# --- the cache does not answer -------------------------------------------------------------------
@pytest.fixture
def silent_cache(settings):
    """A Redis address that accepts connections and never answers (a hung server)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": f"redis://127.0.0.1:{server.getsockname()[1]}/0",
                                   "OPTIONS": {**settings.CACHES["default"]["OPTIONS"], "socket_connect_timeout": 0.3,
                                               "socket_timeout": 0.3}}}
    yield server
    server.close()


def test_sign_in_still_answers_in_bounded_time_when_the_cache_hangs(cast, silent_cache, caplog):
    """Fail-open: the throttle is off while the cache is away; a sign-in waits one cache timeout at most,
    and the next ones not at all (the cache is not tried again for CACHE_RETRY_SECONDS)."""
    started = time.monotonic()
    assert outcome(sign_in("bob@acme.test", PASSWORD))[0] == 302
    first = time.monotonic() - started
    assert first < 3, first
    assert "sign-in throttle off" in caplog.text
    started = time.monotonic()
    assert [outcome(sign_in("bob@acme.test", "wrong-password"))[0] for _ in range(8)] == [200] * 8
    _, good = create_api_token(user=cast.bob, tenant=cast.acme, name="t")
    assert Client().get("/v1/clusters", **bearer(good, "203.0.113.60")).status_code == 200
    assert time.monotonic() - started < 3 + first
    # The admin functions say so instead of pretending.
    with pytest.raises(throttle.ThrottleUnavailable):
        throttle.unlock(email="bob@acme.test")
    with pytest.raises(CommandError, match="Cannot reach"):
        call_command("unlock_signin", "bob@acme.test")
