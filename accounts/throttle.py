"""Throttling of failed sign-ins: passwords, API tokens and (coming) SCIM tokens (docs/security.md).

Failures are counted in the shared cache (Django's RedisCache, CACHES["default"]), so every daphne
process sees the same counters: per *account key* (a normalised email, a token prefix) and per *client
address*, each kind of credential apart. SIGNIN_ACCOUNT_LIMIT failures for one key, or
SIGNIN_ADDRESS_LIMIT from one address, within SIGNIN_WINDOW seconds (a fixed window from the first
failure) lock that key or address for SIGNIN_COOLOFF seconds. A locked attempt is refused before the
credential is checked, so the right password does not get in during a lockout, and the refusal says
nothing about whether the account exists: an unknown email is counted and locked exactly like a known one.
A lockout writes one `auth.lockout` audit event; refused attempts are not counted and write nothing.
A successful sign-in clears its key's counter (not the address's).

If the cache cannot be reached the throttle is off (fail-open): sign-ins are answered as without it,
after at most one cache timeout (CLUSTERRA_CACHE_TIMEOUT_MS), and the cache is not tried again for
CACHE_RETRY_SECONDS; a warning is logged. The admin functions (`unlock`, `lockout_status`) raise
ThrottleUnavailable instead, so a person is told.

OIDC sign-ins never pass through here: the throttle sits in the password forms (accounts/forms.py) and
in the token checks, not in an authentication backend; password throttling for SSO belongs to the IdP.

API
---
Kinds: LOGIN (key: the email), API_TOKEN (key: the token's prefix), SCIM (key: the caller's choice,
e.g. the SCIM token's prefix). Any other lowercase name works as a kind of its own.

check_and_count(kind, key, address, verify, *, tenant=None)
    The one call around a credential check. Raises Throttled (verify is not called) while the key or
    the address is locked; otherwise returns verify()'s result, counting a falsy result as a failure
    and clearing the key's counter on success. key may be None (a malformed credential: only the
    address counts); address may be None (unknown: only the key counts). tenant (a Tenant) goes into
    the lockout's audit event when the caller knows it. The SCIM endpoint, for example:

        try:
            token = throttle.check_and_count(throttle.SCIM, prefix_or_none, throttle.client_address(request),
                                             lambda: find_scim_token(text))
        except throttle.Throttled as exc:
            return 429 with {"detail": exc.lock.message} and Retry-After: exc.lock.retry_after

current_lock(kind, key, address) -> Lock | None; record_failure(kind, key, address, *, tenant=None)
-> Lock | None (the lock this failure started); record_success(kind, key): the pieces of
check_and_count, for callers that cannot wrap their check in a function (the sign-in forms).

lockout_status(email=None, *, address=None, kind=LOGIN, key=None) -> datetime | None
    When the account's (or the address's, or kind/key's) lock ends; None when not locked.

unlock(*, email=None, address=None, kind=None, key=None, actor=None, tenant=None, client_address=None) -> bool
    Ends the lock and clears the failure counters of an email (its password sign-ins), of kind/key
    (e.g. API_TOKEN and a token prefix) and/or of an address (every kind). Writes `auth.unlock` with
    actor and tenant; returns whether something was locked. `manage.py unlock_signin` calls it.
    The caller decides who may unlock whom: a tenant admin may unlock only an email that is a member
    of their own tenant (check the membership first, and pass tenant=), and addresses only staff,
    because an address is shared by every tenant.

client_address(request) -> str | None: the address used everywhere in the portal, REMOTE_ADDR (daphne
runs with --proxy-headers behind nginx, which overwrites X-Forwarded-For). IPv6 addresses are
counted per /64, the block one client usually holds.
"""

import hashlib
import ipaddress
import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple, TypeVar

from django.conf import settings
from django.core.cache import caches
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from redis.exceptions import RedisError

logger = logging.getLogger("clusterra.auth")

LOGIN = "login"
API_TOKEN = "api_token"  # noqa: S105 (the name of a kind, not a secret)
SCIM = "scim"
KINDS = (LOGIN, API_TOKEN, SCIM)  # an address unlock clears these
ACCOUNT = "account"
ADDRESS = "address"
CACHE_RETRY_SECONDS = 10  # after a cache error the throttle stays off this long in this process
_CACHE_ERRORS = (RedisError, OSError)

T = TypeVar("T")


def clock() -> float:
    """Now, in seconds since the epoch: the one clock of this module (tests move it)."""
    return time.time()


class Lock(NamedTuple):
    kind: str
    scope: str  # ACCOUNT or ADDRESS
    until_ts: float

    @property
    def until(self) -> datetime:
        return datetime.fromtimestamp(self.until_ts, UTC)

    @property
    def retry_after(self) -> int:
        """Whole seconds until the lock ends (at least 1), for Retry-After."""
        return max(1, math.ceil(self.until_ts - clock()))

    @property
    def message(self) -> str:
        """The same text for every lock, whether or not the account exists."""
        minutes = math.ceil(self.retry_after / 60)
        return (f"Too many failed sign-in attempts. Try again in {minutes} minute{'s' if minutes != 1 else ''} "
                "or ask your administrator.")


class Throttled(Exception):
    def __init__(self, lock: Lock):
        super().__init__(lock.message)
        self.lock = lock


class ThrottleUnavailable(Exception):
    """The cache cannot be reached (only the admin functions raise it; sign-ins fail open)."""


# --- identities and cache keys -------------------------------------------------------------------
def normalise_email(text: str) -> str:
    return text.strip().lower()


def client_address(request) -> str | None:
    return (request.META.get("REMOTE_ADDR") or None) if request is not None else None


def _address_id(address: str | None) -> str | None:
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _key_id(kind: str, key: str | None) -> str | None:
    if key is None or key == "":
        return None
    return normalise_email(key) if kind == LOGIN else str(key)


def _name(kind: str, scope: str, what: str, ident: str) -> str:
    # Hashed: no email in the cache's key space, and any text makes a valid key (no CacheKeyWarning).
    digest = hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()[:40]
    return f"signin:{kind}:{scope}:{what}:{digest}"


def _scopes(kind: str, key: str | None, address: str | None) -> list[tuple[str, str]]:
    scopes = []
    if (ident := _key_id(kind, key)) is not None:
        scopes.append((ACCOUNT, ident))
    if (ident := _address_id(address)) is not None:
        scopes.append((ADDRESS, ident))
    return scopes


# --- the cache, failing open ---------------------------------------------------------------------
_down_until: dict[str, float] = {}  # cache LOCATION -> monotonic time until which it is not tried
_down_lock = threading.Lock()


def _cache():
    return caches["default"]


def _location(cache) -> str:
    return str(getattr(cache, "_servers", None) or id(cache))


def _usable(cache) -> bool:
    return _down_until.get(_location(cache), 0.0) <= time.monotonic()


def _trip(cache, exc: Exception) -> None:
    with _down_lock:
        location = _location(cache)
        was_up = _down_until.get(location, 0.0) <= time.monotonic()
        _down_until[location] = time.monotonic() + CACHE_RETRY_SECONDS
    if was_up:
        logger.warning("sign-in throttle off for %s s: the cache is unreachable (%s: %s)",
                       CACHE_RETRY_SECONDS, type(exc).__name__, exc)


def _recovered(cache) -> None:
    _down_until.pop(_location(cache), None)


# --- the policy ----------------------------------------------------------------------------------
def _limit(scope: str) -> int:
    return settings.SIGNIN_ACCOUNT_LIMIT if scope == ACCOUNT else settings.SIGNIN_ADDRESS_LIMIT


def _read(kind: str, key: str | None, address: str | None) -> tuple[Lock | None, bool]:
    """The current lock (the later-ending one if both are locked), and whether the key has failures."""
    scopes = _scopes(kind, key, address)
    cache = _cache()
    if not scopes or not _usable(cache):
        return None, False
    names = [_name(kind, scope, "lock", ident) for scope, ident in scopes]
    counter = _name(kind, ACCOUNT, "fail", scopes[0][1]) if scopes[0][0] == ACCOUNT else None
    try:
        values = cache.get_many([*names, *([counter] if counter else [])])
    except _CACHE_ERRORS as exc:
        _trip(cache, exc)
        return None, False
    now = clock()
    locks = [Lock(kind, scope, float(values[name])) for (scope, _), name in zip(scopes, names, strict=True)
             if name in values and float(values[name]) > now]
    return max(locks, key=lambda lock: lock.until_ts, default=None), counter in values


def current_lock(kind: str, key: str | None, address: str | None) -> Lock | None:
    return _read(kind, key, address)[0]


def _count(cache, name: str, window: int) -> int:
    """One more failure in the window that the first failure opened."""
    if cache.add(name, 1, timeout=window):
        return 1
    try:
        count = cache.incr(name)
    except ValueError:  # expired since add(): this failure opens a new window
        cache.set(name, 1, timeout=window)
        return 1
    if count == 1:  # it expired between incr's EXISTS and INCR, which made a key without expiry
        cache.touch(name, window)
    return count


def _take_lock(cache, name: str, until: float, now: float) -> bool:
    """Sets the lock; False when another process has just set it (that one writes the audit event)."""
    ttl = max(1, math.ceil(until - now))
    if cache.add(name, until, timeout=ttl):
        return True
    current = cache.get(name)
    if current is not None and float(current) > now:
        return False
    cache.set(name, until, timeout=ttl)  # a lock that has ended by clock() but not yet expired in Redis
    return True


def record_failure(kind: str, key: str | None, address: str | None, *, tenant=None) -> Lock | None:
    """Counts a failed attempt; returns the lock it started, if any (the attempt itself was answered
    as a plain failure: its credential was checked)."""
    scopes = _scopes(kind, key, address)
    cache = _cache()
    if not scopes or not _usable(cache):
        return None
    started = []
    try:
        for scope, ident in scopes:
            if _count(cache, _name(kind, scope, "fail", ident), settings.SIGNIN_WINDOW) < _limit(scope):
                continue
            now = clock()
            lock = Lock(kind, scope, now + settings.SIGNIN_COOLOFF)
            if _take_lock(cache, _name(kind, scope, "lock", ident), lock.until_ts, now):
                cache.delete(_name(kind, scope, "fail", ident))  # after the cool-off: a fresh allowance
                started.append(lock)
    except _CACHE_ERRORS as exc:
        _trip(cache, exc)
    for lock in started:
        _audit_lockout(lock, key=_key_id(kind, key), address=address, tenant=tenant)
        logger.warning("sign-in lockout: %s by %s until %s", kind, lock.scope, lock.until.isoformat(timespec="seconds"))
    return max(started, key=lambda lock: lock.until_ts, default=None)


def record_success(kind: str, key: str | None) -> None:
    ident = _key_id(kind, key)
    cache = _cache()
    if ident is None or not _usable(cache):
        return
    try:
        cache.delete(_name(kind, ACCOUNT, "fail", ident))
    except _CACHE_ERRORS as exc:
        _trip(cache, exc)


def check_and_count(kind: str, key: str | None, address: str | None, verify: Callable[[], T], *, tenant=None) -> T:
    lock, has_failures = _read(kind, key, address)
    if lock is not None:
        raise Throttled(lock)
    result = verify()
    if not result:
        record_failure(kind, key, address, tenant=tenant)
    elif has_failures:
        record_success(kind, key)
    return result


# --- audit ---------------------------------------------------------------------------------------
def _subject(kind: str, key: str | None):
    """(tenant, target) of an account key, for the audit event: the user and their tenant if they have
    exactly one, the API token and its tenant."""
    if key is None:
        return None, None
    if kind == LOGIN:
        from accounts.models import Membership, User

        user = User.objects.filter(email=key).first()
        if user is None:
            return None, None
        tenants = {m.tenant for m in Membership.objects.filter(user=user).select_related("tenant")}
        return (tenants.pop() if len(tenants) == 1 else None), user
    if kind == API_TOKEN:
        from accounts.models import ApiToken

        token = ApiToken.objects.select_related("tenant").filter(prefix=key).first()
        return (token.tenant, token) if token is not None else (None, None)
    return None, None


def _describe_key(kind: str, key: str) -> dict:
    if kind == LOGIN:
        try:
            validate_email(key)
        except ValidationError:  # people type their password into the email field: keep it out of the log
            return {"key_digest": hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]}
        return {"email": key}
    return {"key": key}


def _audit_lockout(lock: Lock, *, key: str | None, address: str | None, tenant) -> None:
    from audit.services import record_event

    data = {"kind": lock.kind, "scope": lock.scope, "until": lock.until.isoformat(timespec="seconds")}
    target = None
    if lock.scope == ACCOUNT and key is not None:
        data.update(_describe_key(lock.kind, key))
        found_tenant, target = _subject(lock.kind, key)
        tenant = tenant or found_tenant
    else:
        data["address"] = _address_id(address)
        tenant = None  # an address is not any one tenant's
    record_event("auth.lockout", tenant=tenant, target=target, data=data,
                 client_address=address if _address_id(address) else None)


# --- admin: status and unlock --------------------------------------------------------------------
def _targets(email, address, kind, key) -> list[tuple[str, str, str]]:
    targets = []
    if email:
        targets.append((LOGIN, ACCOUNT, normalise_email(email)))
    if key is not None:
        if kind is None:
            raise ValueError("key needs its kind")
        targets.append((kind, ACCOUNT, _key_id(kind, key)))
    if address:
        ident = _address_id(address)
        if ident is None:
            raise ValueError(f"not an IP address: {address!r}")
        targets += [(k, ADDRESS, ident) for k in dict.fromkeys((*KINDS, *([kind] if kind else [])))]
    if not targets:
        raise ValueError("say whom to unlock: email, address, or kind and key")
    return targets


def lockout_status(email: str | None = None, *, address: str | None = None, kind: str = LOGIN,
                   key: str | None = None) -> datetime | None:
    """When the lock of the email's password sign-in (or of kind/key, or of the address for that kind)
    ends, the latest if several are locked; None when none is. Raises ThrottleUnavailable."""
    targets = [t for t in _targets(email, address, kind, key) if t[1] == ACCOUNT or t[0] == kind]
    names = [_name(k, scope, "lock", ident) for k, scope, ident in targets]
    cache = _cache()
    try:
        values = cache.get_many(names)
    except _CACHE_ERRORS as exc:
        raise ThrottleUnavailable(f"the cache is unreachable ({type(exc).__name__}: {exc})") from exc
    _recovered(cache)
    now = clock()
    ends = [float(v) for v in values.values() if float(v) > now]
    return datetime.fromtimestamp(max(ends), UTC) if ends else None


def unlock(*, email: str | None = None, address: str | None = None, kind: str | None = None, key: str | None = None,
           actor=None, tenant=None, client_address: str | None = None) -> bool:
    """Ends the locks and clears the counters named (see the module docstring); writes `auth.unlock`.
    Returns whether any of them was locked. Raises ThrottleUnavailable, ValueError for a bad address."""
    from audit.services import record_event

    targets = _targets(email, address, kind, key)
    locks = [_name(k, scope, "lock", ident) for k, scope, ident in targets]
    counters = [_name(k, scope, "fail", ident) for k, scope, ident in targets]
    cache = _cache()
    try:
        values = cache.get_many(locks)
        cache.delete_many(locks + counters)
    except _CACHE_ERRORS as exc:
        raise ThrottleUnavailable(f"the cache is unreachable ({type(exc).__name__}: {exc})") from exc
    _recovered(cache)
    now = clock()
    was_locked = any(float(v) > now for v in values.values())
    data = {"was_locked": was_locked}
    target = None
    if email:
        data["email"] = normalise_email(email)
        _, target = _subject(LOGIN, normalise_email(email))
    if key is not None:
        data.update({"kind": kind, "key": _key_id(kind, key)})
    if address:
        data["address"] = _address_id(address)
    record_event("auth.unlock", tenant=tenant, actor=actor, target=target, data=data, client_address=client_address)
    return was_locked
