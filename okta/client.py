"""Okta's management API over plain HTTP (requests): groups by name, a group's members page by page.

Why not the Okta SDK (okta-sdk-python): it is asyncio-only (aiohttp) while every caller here is sync
(Celery task, console view, manage.py), it pulls in a dozen packages for two GET endpoints, and its
built-in retry hides what the reconciliation has to decide itself: a read that did not complete must
fail the whole run, so that nobody is offboarded because a page was missing. Two endpoints, `Link`
pagination and the rate-limit headers are a few dozen lines of plain HTTP we can test against a local
server.

- Authentication: an API token (`Authorization: SSWS …`) or an OAuth 2.0 service app: client
  credentials with a private-key JWT at the org authorization server (`/oauth2/v1/token`, scopes
  okta.groups.read okta.users.read), then `Authorization: Bearer …`. DPoP-bound tokens are not supported.
- Pagination: the `Link: <…>; rel="next"` URL is followed as given, only on the org's own origin (the
  token is never sent anywhere else).
- Rate limits: when `X-Rate-Limit-Remaining` reaches 0 the next request waits until `X-Rate-Limit-Reset`;
  a 429 waits until the reset (measured against the response's `Date`, so clock skew does not matter)
  and is retried, each wait at most OKTA_RATE_LIMIT_MAX_WAIT s and all of them at most
  OKTA_RATE_LIMIT_BUDGET s in a run. Beyond that, or on any other failure, OktaError: the caller applies
  nothing.
"""

import email.utils
import logging
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import requests
from django.conf import settings

logger = logging.getLogger(__name__)

SCOPES = "okta.groups.read okta.users.read"


class OktaError(Exception):
    """Okta could not be read completely; the message says why, for an admin."""


class OktaNotFound(OktaError):
    """A 404: the group (or org path) does not exist."""


@dataclass
class Stats:
    requests: int = 0
    rate_limit_wait: float = 0.0  # seconds
    waits: list[float] = field(default_factory=list)


def _next_link(header: str) -> str | None:
    """The `rel="next"` URL of a Link header (Okta sends `<url>; rel="self", <url>; rel="next"`)."""
    for part in (header or "").split(","):
        url, _, params = part.partition(";")
        url = url.strip()
        if url.startswith("<") and url.endswith(">") and any(p.strip().replace(" ", "") in ('rel="next"', "rel=next")
                                                             for p in params.split(";")):
            return url[1:-1]
    return None


def _error_summary(response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip()
    if isinstance(body, dict):
        return str(body.get("errorSummary") or body.get("error_description") or body.get("error") or "")[:300]
    return ""


class OktaClient:
    def __init__(self, connection, *, sleep=time.sleep, clock=time.time):
        self.org = connection.org_url.rstrip("/")
        self.connection = connection
        self.session = requests.Session()
        self.session.headers.update({"Accept": "application/json", "User-Agent": "Clusterra-Okta-Reconciliation"})
        self.sleep, self.clock = sleep, clock
        self.stats = Stats()
        self._authorization: str | None = None
        self._wait_until: float | None = None  # local clock: when X-Rate-Limit-Remaining said 0
        self.timeout = (settings.OKTA_CONNECT_TIMEOUT, settings.OKTA_READ_TIMEOUT)

    # --- authentication ---
    def authorization(self) -> str:
        if self._authorization is None:
            if self.connection.auth_method == self.connection.Auth.OAUTH:
                self._authorization = f"Bearer {self._service_app_token()}"
            else:
                token = self.connection.api_token()
                if not token:
                    raise OktaError("No API token is set.")
                self._authorization = f"SSWS {token}"
        return self._authorization

    def _service_app_token(self) -> str:
        import jwt
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        if not self.connection.client_id or not self.connection.private_key_sealed:
            raise OktaError("The service app needs a client id and a private key.")
        token_url = f"{self.org}/oauth2/v1/token"
        now = int(self.clock())
        headers = {"kid": self.connection.key_id} if self.connection.key_id else None
        try:
            key = load_pem_private_key(self.connection.private_key().encode(), password=None)
            algorithm = "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"
            assertion = jwt.encode({"iss": self.connection.client_id, "sub": self.connection.client_id, "aud": token_url,
                                    "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex}, key, algorithm=algorithm,
                                   headers=headers)
        except Exception as exc:  # an unreadable key: the admin re-enters it
            raise OktaError(f"The service app's private key cannot be used: {type(exc).__name__}.") from None
        try:
            response = self.session.post(token_url, timeout=self.timeout, allow_redirects=False, data={
                "grant_type": "client_credentials", "scope": SCOPES,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer", "client_assertion": assertion})
        except requests.RequestException as exc:
            raise OktaError(f"Okta's token endpoint did not answer: {type(exc).__name__}.") from None
        self.stats.requests += 1
        if response.status_code != 200:
            summary = _error_summary(response)
            if "dpop" in summary.lower():
                summary += " (turn off \"Require DPoP\" for this service app, or use an API token)"
            raise OktaError(f"Okta refused the service app's token request ({response.status_code}): {summary}")
        body = response.json()
        if str(body.get("token_type", "")).lower() != "bearer" or not body.get("access_token"):
            raise OktaError(f"Okta issued a {body.get('token_type')!r} token; only Bearer tokens are supported.")
        return body["access_token"]

    # --- requests ---
    def get(self, url: str, params: dict | None = None) -> requests.Response:
        """One GET, waiting out rate limits; anything but a 200 after that raises OktaError."""
        if not url.startswith(self.org + "/"):
            raise OktaError(f"Refusing to follow a link off the org ({urlsplit(url).netloc}).")
        retries = limited = 0
        while True:
            if self._wait_until is not None:
                self._wait(self._wait_until - self.clock(), "X-Rate-Limit-Remaining reached 0")
                self._wait_until = None
            try:
                response = self.session.get(url, params=params, timeout=self.timeout, allow_redirects=False,
                                            headers={"Authorization": self.authorization()})
            except requests.RequestException as exc:
                retries += 1
                if retries > settings.OKTA_RETRIES:
                    raise OktaError(f"Okta did not answer ({type(exc).__name__}) at {urlsplit(url).path}.") from None
                self._wait(retries, f"{type(exc).__name__}", rate_limit=False)
                continue
            self.stats.requests += 1
            reset = self._reset_in(response)
            if response.status_code == 429:
                limited += 1
                if reset is None or limited > 10:
                    raise OktaError("Okta answered 429 (rate limited) " + ("without X-Rate-Limit-Reset." if reset is None
                                                                             else "ten times in a row for one page."))
                self._wait(reset, "429 Too Many Requests")
                continue
            if response.status_code >= 500:
                retries += 1
                if retries > settings.OKTA_RETRIES:
                    raise OktaError(f"Okta answered {response.status_code} at {urlsplit(url).path}: {_error_summary(response)}")
                self._wait(retries, f"HTTP {response.status_code}", rate_limit=False)
                continue
            remaining = response.headers.get("X-Rate-Limit-Remaining")
            if remaining is not None and remaining.strip() == "0" and reset is not None:
                self._wait_until = self.clock() + reset
            if response.status_code in (401, 403):
                raise OktaError(f"Okta refused the credentials ({response.status_code}: {_error_summary(response)}). "
                                f"The token needs the scopes {SCOPES} (an API token: its admin's read access to groups and users).")
            if response.status_code == 404:
                raise OktaNotFound(f"Okta answered 404 at {urlsplit(url).path}: {_error_summary(response)}")
            if response.status_code != 200:
                raise OktaError(f"Okta answered {response.status_code} at {urlsplit(url).path}: {_error_summary(response)}")
            return response

    def _reset_in(self, response) -> float | None:
        """Seconds until X-Rate-Limit-Reset, measured on Okta's own clock (its Date header) when it sends one."""
        raw = response.headers.get("X-Rate-Limit-Reset")
        if raw is None:
            return None
        try:
            reset = float(raw)
        except ValueError:
            return None
        now = self.clock()
        date = response.headers.get("Date")
        if date:
            try:
                now = email.utils.parsedate_to_datetime(date).timestamp()
            except (TypeError, ValueError):
                pass
        return max(0.0, reset - now)

    def _wait(self, seconds: float, why: str, *, rate_limit: bool = True) -> None:
        seconds = max(0.0, seconds)
        if rate_limit:
            seconds += 0.1  # Okta resets on the second: be just past it
            if seconds > settings.OKTA_RATE_LIMIT_MAX_WAIT:
                raise OktaError(f"Okta's rate limit ({why}) resets in {seconds:.0f} s, more than the "
                                f"{settings.OKTA_RATE_LIMIT_MAX_WAIT} s a run waits.")
            if self.stats.rate_limit_wait + seconds > settings.OKTA_RATE_LIMIT_BUDGET:
                raise OktaError(f"Okta kept rate-limiting ({why}): waited {self.stats.rate_limit_wait:.0f} s already, "
                                f"the budget is {settings.OKTA_RATE_LIMIT_BUDGET} s.")
            self.stats.rate_limit_wait += seconds
            self.stats.waits.append(seconds)
            logger.info("okta %s: rate limited (%s), waiting %.1f s", self.org, why, seconds)
        self.sleep(seconds)

    def pages(self, path: str, params: dict) -> list:
        """Every item of a listing, following `Link: rel="next"` to the end."""
        url, items = urljoin(self.org + "/", path.lstrip("/")), []
        while url:
            response = self.get(url, params)
            try:
                page = response.json()
            except ValueError:
                raise OktaError(f"Okta sent a page that is not JSON at {urlsplit(url).path}.") from None
            if not isinstance(page, list):
                raise OktaError(f"Okta sent a page that is not a list at {urlsplit(url).path}.")
            items.extend(page)
            url, params = _next_link(response.headers.get("Link", "")), None  # the next URL carries its own query
        return items

    # --- the two reads the reconciliation needs ---
    def find_group(self, name: str) -> dict:
        """The one group whose name is exactly `name` (`q` matches name prefixes)."""
        found = [g for g in self.pages("/api/v1/groups", {"q": name, "limit": 200})
                 if isinstance(g, dict) and (g.get("profile") or {}).get("name") == name]
        if not found:
            raise OktaError(f"Okta has no group named {name!r} (an access rule names it). Rename or delete the rule, "
                            "or create the group in Okta.")
        if len(found) > 1:
            raise OktaError(f"Okta has {len(found)} groups named {name!r}: the reconciliation cannot tell which one is meant.")
        return found[0]

    def group_members(self, group_id: str, name: str) -> list[dict]:
        try:
            return self.pages(f"/api/v1/groups/{group_id}/users", {"limit": settings.OKTA_PAGE_SIZE})
        except OktaNotFound:
            raise OktaError(f"The Okta group {name!r} ({group_id}) no longer exists (404 while reading its members).") from None

