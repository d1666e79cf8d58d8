"""A real local OpenID Provider for the tests: tests/idp/server.mjs (panva's oidc-provider) in a subprocess.

Fixtures (registered in tests/conftest.py):
- `oidc_provider`: one provider for the whole session, started with OP_TEST_HOOKS=1.
- `oidc_provider_clean`: the same provider, reset() before and after the test (use it when a test
  changes users, tampers with tokens or must start without an OP session).

Redirect URIs are matched exactly (port included). The provider reads its clients and users from its
config file at every lookup, so register a portal's callback while it runs:
`oidc_provider.add_redirect_uris(f"{live_daphne}/oidc/callback/")`. For a provider of your own
(another issuer host, other users), use `running_oidc_provider(directory, ...)`.

`idp_sign_in()` and `idp_sign_out()` drive the provider's login form and logout page with requests alone.
See docs/oidc-test-provider.md.
"""

import contextlib
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
import requests

IDP_DIR = Path(__file__).resolve().parent / "idp"
IDP_PASSWORD = "idp-password-123"  # every default user's password (tests and the local demo only)
CLIENT_ID = "clusterra-test"
CLIENT_SECRET = "clusterra-test-secret"
PLACEHOLDER_REDIRECT_URI = "http://127.0.0.1:9/oidc/callback/"  # port 9 (discard): nothing answers there
ID_TOKEN_MODES = ("forged", "wrong-aud", "wrong-iss", "expired", "wrong-nonce", "wrong-azp")
HTTP_TIMEOUT = 10


def default_users() -> list[dict]:
    """alice@demo.test (clusterra-admins, clusterra-users), bob@demo.test (clusterra-users),
    carol@example.test (clusterra-users, new to the portal), dave@example.test (no groups),
    eve@example.test (unknown-group); password IDP_PASSWORD; sub = the part before the @."""
    return json.loads((IDP_DIR / "users.json").read_text())


class OidcProvider:
    """A running tests/idp/server.mjs. Its config file is the source of truth for clients and users."""

    def __init__(self, proc: subprocess.Popen, issuer: str, config_path: Path, key_path: Path, log_path: Path):
        self.proc = proc
        self.issuer = issuer
        self.client_id = CLIENT_ID
        self.client_secret = CLIENT_SECRET
        self.config_path = config_path
        self.key_path = key_path  # OP_KEY_FILE: the private signing JWK (RS256)
        self.log_path = log_path
        self._lock = threading.Lock()
        self._initial_users = self._config()["users"]
        self._discovery: dict | None = None

    # --- what the provider serves ---
    @property
    def discovery(self) -> dict:
        if self._discovery is None:
            response = requests.get(f"{self.issuer}/.well-known/openid-configuration", timeout=HTTP_TIMEOUT)
            response.raise_for_status()
            self._discovery = response.json()
        return self._discovery

    @property
    def private_jwk(self) -> dict:
        """The provider's own signing key (private JWK with kid and alg), to mint tokens it would sign."""
        return json.loads(self.key_path.read_text())

    # --- the config file (re-read by the provider at every lookup) ---
    def _config(self) -> dict:
        return json.loads(self.config_path.read_text())

    def _update(self, change) -> None:
        with self._lock:
            config = self._config()
            change(config)
            tmp = self.config_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(config, indent=2))
            os.replace(tmp, self.config_path)  # the provider never reads half a file

    def add_client(self, client_id: str, client_secret: str, redirect_uris: Iterable[str],
                   post_logout_redirect_uris: Iterable[str] = (), **metadata) -> None:
        """Add (or replace) a confidential client; usable at once."""
        entry = {"client_id": client_id, "client_secret": client_secret, "redirect_uris": list(redirect_uris),
                 "post_logout_redirect_uris": list(post_logout_redirect_uris), **metadata}

        def change(config):
            config["clients"] = [*(c for c in config["clients"] if c["client_id"] != client_id), entry]
        self._update(change)

    def add_redirect_uris(self, *redirect_uris: str, post_logout_redirect_uris: Iterable[str] = (),
                          client_id: str | None = None) -> None:
        """Allow more (exact) redirect URIs, and post-logout redirect URIs, for a client (default: ours)."""
        def change(config):
            client = next(x for x in config["clients"] if x["client_id"] == (client_id or self.client_id))
            for key, uris in (("redirect_uris", redirect_uris), ("post_logout_redirect_uris", post_logout_redirect_uris)):
                client[key] = [*client.get(key, []), *(u for u in uris if u not in client.get(key, []))]
        self._update(change)

    def set_user(self, email: str, **claims) -> None:
        """Change claims of a user (None removes one), or add a user with this email (give sub and password)."""
        def change(config):
            user = next((u for u in config["users"] if u["email"] == email), None)
            if user is None:
                user = {"email": email}
                config["users"].append(user)
            user.update(claims)
            for key in [k for k, v in user.items() if v is None]:
                del user[key]
        self._update(change)

    def set_user_groups(self, email: str, groups: Iterable[str]) -> None:
        """The user's groups from the next sign-in or token on."""
        self.set_user(email, groups=list(groups))

    # --- test hooks (OP_TEST_HOOKS=1) ---
    def _hook(self, path: str, body: dict | None = None) -> None:
        response = requests.post(f"{self.issuer}/__test__/{path}", json=body or {}, timeout=HTTP_TIMEOUT)
        response.raise_for_status()

    def next_id_token(self, mode: str) -> None:
        """The next token response with an ID token carries a tampered one: forged (another RSA key, the
        real kid), wrong-aud, wrong-iss, expired, wrong-nonce or wrong-azp (re-signed with the real key)."""
        assert mode in ID_TOKEN_MODES, mode
        self._hook("next-id-token", {"mode": mode})

    def reset(self) -> None:
        """The users it started with again; the provider forgets the pending tamper mode and every
        session, grant, code and token (clients, and redirect URIs added, stay)."""
        def change(config):
            config["users"] = self._initial_users
        self._update(change)
        self._hook("reset")

    def stop(self) -> None:
        from tests.conftest import stop_process

        stop_process(self.proc)


def start_oidc_provider(directory: Path, *, redirect_uris: Iterable[str] = (PLACEHOLDER_REDIRECT_URI,),
                        post_logout_redirect_uris: Iterable[str] = (), users: list[dict] | None = None,
                        host: str = "127.0.0.1", test_hooks: bool = True) -> OidcProvider:
    """Start tests/idp/server.mjs on a free port with its config and key in `directory`; call stop().

    `host` is the issuer's host name (the server listens on 127.0.0.1 either way)."""
    from tests.conftest import _free_port, stop_process, wait_for

    node = shutil.which("node")
    if not node or not (IDP_DIR / "node_modules" / "oidc-provider").is_dir():
        pytest.fail("The local OpenID Provider is not installed: scripts/venv.sh test runs npm ci in tests/idp")
    directory.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    issuer = f"http://{host}:{port}"
    config_path, key_path, log_path = directory / "op-config.json", directory / "op-key.json", directory / "op.log"
    config_path.write_text(json.dumps({
        "clients": [{"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uris": list(redirect_uris),
                     "post_logout_redirect_uris": list(post_logout_redirect_uris)}],
        "users": default_users() if users is None else users,
    }, indent=2))
    env = {**os.environ, "OP_PORT": str(port), "OP_HOST": "127.0.0.1", "OP_ISSUER": issuer,
           "OP_CONFIG": str(config_path), "OP_KEY_FILE": str(key_path), "OP_TEST_HOOKS": "1" if test_hooks else "0"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([node, str(IDP_DIR / "server.mjs")], cwd=IDP_DIR, env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def discovered():
        if proc.poll() is not None:
            raise AssertionError(f"the OpenID Provider exited ({proc.returncode}): {log_path.read_text()}")
        try:
            return requests.get(f"http://127.0.0.1:{port}/.well-known/openid-configuration", timeout=1).ok
        except requests.RequestException:
            return False

    try:
        wait_for(discovered, timeout=30, what=f"the OpenID Provider's discovery (log: {log_path})")
    except BaseException:
        stop_process(proc)
        raise
    return OidcProvider(proc, issuer, config_path, key_path, log_path)


@contextlib.contextmanager
def running_oidc_provider(directory: Path, **options) -> Iterator[OidcProvider]:
    """start_oidc_provider() as a context manager (stopped on exit)."""
    provider = start_oidc_provider(directory, **options)
    try:
        yield provider
    finally:
        provider.stop()


@pytest.fixture(scope="session")
def oidc_provider(tmp_path_factory) -> Iterator[OidcProvider]:
    with running_oidc_provider(tmp_path_factory.mktemp("oidc-provider")) as provider:
        yield provider


@pytest.fixture
def oidc_provider_clean(oidc_provider) -> Iterator[OidcProvider]:
    oidc_provider.reset()
    yield oidc_provider
    oidc_provider.reset()


# --- driving the provider with requests alone ---
class _Forms(HTMLParser):
    """Every <form> of a page: its action, method and named fields (inputs and buttons with a value)."""

    def __init__(self):
        super().__init__()
        self.forms: list[dict] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.forms.append({"action": attrs.get("action") or "", "method": (attrs.get("method") or "get").lower(),
                               "id": attrs.get("id"), "fields": {}})
        elif tag == "input" and self.forms and attrs.get("name"):
            self.forms[-1]["fields"][attrs["name"]] = attrs.get("value") or ""


def _forms(response: requests.Response) -> list[dict]:
    if "html" not in response.headers.get("Content-Type", ""):
        return []
    parser = _Forms()
    parser.feed(response.text)
    return parser.forms


def _follow(session: requests.Session, response: requests.Response, stop_at: str | None, timeout: float) -> requests.Response:
    """Follow redirects by hand, up to one whose Location starts with `stop_at` (returned unfollowed)."""
    history = [*response.history]
    for _ in range(30):
        location = response.headers.get("Location")
        if not response.is_redirect or not location:
            break
        target = urljoin(response.url, location)
        if stop_at and target.startswith(stop_at):
            break
        history.append(response)
        response = session.get(target, allow_redirects=False, timeout=timeout)
    else:
        raise AssertionError(f"too many redirects, the last to {response.headers.get('Location')}")
    response.history = history
    return response


def _submit(session, response, form, fields, stop_at, timeout) -> requests.Response:
    url = urljoin(response.url, form["action"])
    data = {**form["fields"], **fields}
    if form["method"] == "post":
        sent = session.post(url, data=data, allow_redirects=False, timeout=timeout)
    else:
        sent = session.get(url, params=data, allow_redirects=False, timeout=timeout)
    sent.history = [*response.history, response]
    return _follow(session, sent, stop_at, timeout)


def idp_sign_in(session: requests.Session, start_url: str, login: str, password: str, *,
                stop_at: str | None = None, timeout: float = HTTP_TIMEOUT) -> requests.Response:
    """GET `start_url` (the portal's login link, or an authorization URL) and follow the redirects; on the
    provider's login form post `login` and `password`, then follow on (consent is automatic) back to the
    portal. Returns the final response: a wrong password gives the form again with 401. When the OP
    session is already signed in there is no form. `stop_at`: a URL prefix (a redirect URI nobody
    serves) whose redirect is returned unfollowed, its Location holding code and state."""
    response = _follow(session, session.get(start_url, allow_redirects=False, timeout=timeout), stop_at, timeout)
    form = next((f for f in _forms(response) if {"login", "password"} <= f["fields"].keys()), None)
    if form is None:
        return response
    return _submit(session, response, form, {"login": login, "password": password}, stop_at, timeout)


def idp_sign_out(session: requests.Session, response: requests.Response, *, stop_at: str | None = None,
                 timeout: float = HTTP_TIMEOUT) -> requests.Response:
    """Given a response that landed on the provider's end-session page (a browser submits it by script),
    post its form (xsrf, logout=yes) and follow the redirects to the post-logout URI. Any other
    response is returned as it is."""
    form = next((f for f in _forms(response) if urlsplit(f["action"]).path.endswith("/session/end/confirm")), None)
    if form is None:
        return response
    return _submit(session, response, form, {"logout": "yes"}, stop_at, timeout)
