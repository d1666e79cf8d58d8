"""A local Okta org for the tests and bench/okta_reconcile.py: the two Groups API reads the reconciliation makes.

- `GET /api/v1/groups?q=NAME&limit=N`: groups whose name starts with NAME (Okta's `q`), `Link` pages.
- `GET /api/v1/groups/{id}/users?limit=N[&after=CURSOR]`: the members, `limit` at a time, with
  `Link: <…>; rel="self"` and `<…?after=…>; rel="next"` as Okta sends them (the cursor is the last user's id).
- Rate limits on every answer: `X-Rate-Limit-Limit/-Remaining/-Reset` (a minute window) and `Date`.
- `Authorization: SSWS <token>`, or `Bearer <access token>` from `POST /oauth2/v1/token` (client credentials with a
  private-key JWT, checked against the service app's public key): anything else is a 401 in Okta's error shape.
- Faults the tests script: `fail(...)` answers chosen requests with a status (a 429 with a reset, a 500), a
  deleted group answers 404, `stop()` makes the org unreachable.
"""

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt

RATE_LIMIT = 600  # requests a minute, like Okta's /api/v1/groups budget on many orgs


@dataclass
class Fault:
    path_contains: str
    status: int
    times: int = 1
    skip: int = 0  # let this many matching requests through first
    reset_in: float | None = None  # X-Rate-Limit-Reset this many seconds from now (a 429)
    seen: int = 0


@dataclass
class OktaGroup:
    id: str
    name: str
    members: list[dict] = field(default_factory=list)


class FakeOkta:
    def __init__(self, *, token: str = "ssws-test-token"):  # noqa: S107 (the fake org's own token)
        self.token = token
        self.groups: dict[str, OktaGroup] = {}
        self.deleted: set[str] = set()
        self.faults: list[Fault] = []
        self.requests: list[str] = []  # "GET /path?query"
        self.service_app: tuple[str, object] | None = None  # (client id, public key)
        self.access_tokens: set[str] = set()
        self.remaining = RATE_LIMIT
        self.window_reset = int(time.time()) + 60
        self.latency = 0.0  # seconds added to each answer
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.port: int | None = None

    # --- the org's data ---
    def add_group(self, name: str, members: list[dict] = ()) -> OktaGroup:
        group = OktaGroup(id=f"00g{next(self._ids):017d}", name=name, members=list(members))
        self.groups[group.id] = group
        return group

    def group(self, name: str) -> OktaGroup:
        return next(g for g in self.groups.values() if g.name == name)

    def user(self, email: str, *, status: str = "ACTIVE", first: str = "", last: str = "", login: str | None = None) -> dict:
        return {"id": f"00u{next(self._ids):017d}", "status": status, "created": "2026-01-01T00:00:00.000Z",
                "profile": {"login": login or email, "email": email, "firstName": first or email.split("@")[0], "lastName": last or "Test"}}

    def delete_group(self, name: str) -> None:
        """The group disappears between reads: it is still found by name, its members answer 404."""
        self.deleted.add(self.group(name).id)

    def fail(self, path_contains: str, status: int, *, times: int = 1, skip: int = 0, reset_in: float | None = None) -> None:
        self.faults.append(Fault(path_contains, status, times=times, skip=skip, reset_in=reset_in))

    def member_requests(self) -> list[str]:
        return [r for r in self.requests if "/users" in r]

    # --- the server ---
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int = 0) -> "FakeOkta":
        handler = type("Handler", (_Handler,), {"okta": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    # --- answers ---
    def _rate_headers(self) -> dict:
        with self._lock:
            now = time.time()
            if now >= self.window_reset:
                self.remaining, self.window_reset = RATE_LIMIT, int(now) + 60
            self.remaining = max(0, self.remaining - 1)
            return {"X-Rate-Limit-Limit": str(RATE_LIMIT), "X-Rate-Limit-Remaining": str(self.remaining),
                    "X-Rate-Limit-Reset": str(self.window_reset)}

    def _fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.path_contains in path and fault.times > 0:
                    fault.seen += 1
                    if fault.seen <= fault.skip:
                        return None
                    fault.times -= 1
                    return fault
        return None

    def authorized(self, header: str | None) -> bool:
        if header == f"SSWS {self.token}":
            return True
        return bool(header and header.startswith("Bearer ") and header[7:] in self.access_tokens)

    def token_request(self, form: dict) -> tuple[int, dict]:
        if self.service_app is None:
            return 401, {"error": "invalid_client", "error_description": "No service app."}
        client_id, public_key = self.service_app
        if form.get("grant_type") != "client_credentials" or \
                form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
            return 400, {"error": "invalid_request", "error_description": "client credentials with a JWT assertion only"}
        try:
            claims = jwt.decode(form.get("client_assertion", ""), public_key, algorithms=["RS256", "ES256"],
                                audience=f"{self.url}/oauth2/v1/token", issuer=client_id, options={"require": ["exp", "jti", "sub"]})
        except jwt.PyJWTError as exc:
            return 401, {"error": "invalid_client", "error_description": f"The client_assertion is invalid: {exc}"}
        if claims["sub"] != client_id or set(form.get("scope", "").split()) - {"okta.groups.read", "okta.users.read"}:
            return 400, {"error": "invalid_scope", "error_description": "The requested scope is invalid."}
        access = f"at-{next(self._ids)}"
        self.access_tokens.add(access)
        return 200, {"token_type": "Bearer", "expires_in": 3600, "access_token": access, "scope": form["scope"]}


class _Handler(BaseHTTPRequestHandler):
    okta: FakeOkta
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status: int, body, headers: dict | None = None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            for each in value if isinstance(value, list) else [value]:  # Okta sends one Link header per relation
                self.send_header(name, each)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        okta = self.okta
        okta.requests.append(f"POST {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        if urlsplit(self.path).path != "/oauth2/v1/token":
            return self._send(404, {"errorCode": "E0000022", "errorSummary": "The endpoint does not support the provided HTTP method"})
        status, body = okta.token_request(form)
        self._send(status, body)

    def do_GET(self):
        okta = self.okta
        okta.requests.append(f"GET {self.path}")
        if okta.latency:
            time.sleep(okta.latency)
        headers = okta._rate_headers()
        fault = okta._fault(self.path)
        if fault is not None:
            if fault.reset_in is not None:
                headers["X-Rate-Limit-Remaining"] = "0"
                headers["X-Rate-Limit-Reset"] = str(int(time.time() + fault.reset_in))
            summary = "API call exceeded rate limit due to too many requests." if fault.status == 429 else "Internal Server Error"
            return self._send(fault.status, {"errorCode": "E0000047" if fault.status == 429 else "E0000009",
                                             "errorSummary": summary}, headers)
        if not okta.authorized(self.headers.get("Authorization")):
            return self._send(401, {"errorCode": "E0000011", "errorSummary": "Invalid token provided"}, headers)
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        segments = parts.path.strip("/").split("/")
        if segments == ["api", "v1", "groups"]:
            found = [g for g in okta.groups.values() if g.name.lower().startswith(query.get("q", "").lower())]
            items = [{"id": g.id, "type": "OKTA_GROUP", "profile": {"name": g.name, "description": ""}} for g in found]
            return self._page(parts.path, query, items, headers)
        if len(segments) == 5 and segments[:3] == ["api", "v1", "groups"] and segments[4] == "users":
            group = okta.groups.get(segments[3])
            if group is None or group.id in okta.deleted:
                return self._send(404, {"errorCode": "E0000007", "errorSummary": f"Not found: Resource not found: {segments[3]} (UserGroup)"},
                                  headers)
            return self._page(parts.path, query, group.members, headers)
        self._send(404, {"errorCode": "E0000022", "errorSummary": "The endpoint does not exist."}, headers)

    def _page(self, path: str, query: dict, items: list[dict], headers: dict):
        limit = max(1, min(int(query.get("limit", 200)), 1000))
        start = 0
        if "after" in query:
            ids = [item["id"] for item in items]
            start = ids.index(query["after"]) + 1 if query["after"] in ids else len(items)
        page = items[start:start + limit]
        base = f"{self.okta.url}{path}"
        links = [f'<{base}?{urlencode(query)}>; rel="self"']
        if start + limit < len(items):
            links.append(f'<{base}?{urlencode({**query, "limit": limit, "after": page[-1]["id"]})}>; rel="next"')
        self._send(200, page, {**headers, "Link": links})
