"""A strict local stand-in for the AWS control plane an SSM terminal needs: STS and Session Manager.

Why: tests/test_ssm_backend.py drives the SSM backend in-process with moto (STS) and botocore's
Stubber (SSM). A SEPARATE portal process (daphne, in a live test or the benchmark) cannot be stubbed,
and moto neither checks web-identity tokens nor implements the session calls. This is a small HTTP
server on 127.0.0.1:0 (a ThreadingHTTPServer in a daemon thread; use it as a context manager) that
speaks the two wire protocols botocore uses and creates the sessions on tests/ssm_emulator.py, so a
real portal process runs real SSM sessions against the emulator:

STS, Query protocol (POST form body, Action=AssumeRoleWithWebIdentity, Version=2011-06-15; XML out):
  the WebIdentityToken is checked as AWS checks it: the issuer must be a registered OIDC provider
  (`issuer=`, or any issuer when None: discovered from the token's `iss`); its
  /.well-known/openid-configuration is fetched, `issuer` there must equal `iss`, and the token's RS256
  signature is verified against the keys at its `jwks_uri` (by `kid`; refetched once for an unknown
  kid); then `aud` (the provider's client ids, default sts.amazonaws.com), `exp`/`nbf`, `sub`; the role's
  trust (known role, `sub` pattern, sts:TagSession when the token carries session tags); RoleArn,
  RoleSessionName and DurationSeconds as in the service model (and the role's MaxSessionDuration).
  Session tags come from the "https://aws.amazon.com/tags" claim; principal_tags.SSMSessionRunAs is the
  Run As user. Answers have the real shape (AssumeRoleWithWebIdentityResponse / ...Result / Credentials,
  SubjectFromWebIdentityToken, AssumedRoleUser, Audience, Provider) and errors are STS's XML
  ErrorResponse (InvalidIdentityToken, ExpiredTokenException, IDPCommunicationError: 400;
  AccessDenied: 403; ValidationError: 400). Error codes and HTTP statuses come from botocore's model of
  STS; the message texts are close to AWS's but not all are verbatim. `rejected_claims` (subjects or
  jti values) models an identity provider that revoked a token: IDPRejectedClaim, 403.

SSM, JSON 1.1 (POST /, X-Amz-Target: AmazonSSM.<Operation>, Content-Type application/x-amz-json-1.1):
  every request needs SigV4 with credentials this stand-in issued and that have not expired: the
  access key, the X-Amz-Security-Token, the credential scope (date, region, "ssm", aws4_request),
  X-Amz-Date within 5 minutes, and the signature itself, recomputed with botocore's own SigV4Auth over
  the request as received. Errors are JSON {"__type": ..., "message": ...}.
  - StartSession: Target must be the emulator's target (else TargetNotConnected), DocumentName in
    `documents` (else InvalidDocument); the session runs as the caller's SSMSessionRunAs user
    (`shell_for(run_as)` gives the argv; by default `runuser -u USER -- /bin/bash --login` as root, the
    current user's login bash otherwise). SessionId is `<RoleSessionName>-<17 hex>` as on AWS.
  - ResumeSession: the session's owner only (same assumed-role identity, ${aws:userid}); a new token.
    DoesNotExistException for unknown or terminated sessions.
  - TerminateSession: the owner only; ends the emulator session (its shell is killed); idempotent.
  Everything else is UnknownOperationException.

Every call is recorded in `control_plane.calls` (service, operation, caller, params without secrets,
outcome) for assertions. Nothing here logs a token, secret key or session token.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import hmac
import json
import os
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import parse_qs, urlsplit
from urllib.request import Request, urlopen
from xml.sax.saxutils import escape

import jwt
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

STS_NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"
STS_VERSION = "2011-06-15"
DEFAULT_AUDIENCE = "sts.amazonaws.com"
DEFAULT_ACCOUNT = "123456789012"
DEFAULT_DOCUMENTS = ("Clusterra-Shell",)
TAGS_CLAIM = "https://aws.amazon.com/tags"
RUN_AS_TAG = "SSMSessionRunAs"
SIGNING_ALGORITHMS = ("RS256", "RS384", "RS512")
MAX_REQUEST_SKEW = 300  # SigV4: X-Amz-Date within 5 minutes of the server's clock
JSON_CONTENT_TYPE = "application/x-amz-json-1.1"

_ROLE_ARN = re.compile(r"^arn:(aws[a-z-]*):iam::(\d{12}):role/(?:[\w+=,.@-]+/)*([\w+=,.@-]{1,64})$", re.ASCII)
_SESSION_NAME = re.compile(r"^[\w+=,.@-]{2,64}$", re.ASCII)
_DOCUMENT = re.compile(r"^[a-zA-Z0-9_\-.:/]{3,128}$")
_REASON = re.compile(r"^.{1,256}$")
_TAG_TEXT = re.compile(r"^[\w .:/=+\-@]*$")
_POSIX_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=([^/,\s]+)/(\d{8})/([^/,\s]+)/([^/,\s]+)/aws4_request,\s*"
    r"SignedHeaders=([a-z0-9;-]+),\s*Signature=([0-9a-f]{64})$"
)
_SSM_OPERATIONS = ("StartSession", "ResumeSession", "TerminateSession")


class AwsFault(Exception):
    """An error answer: `code` as AWS names it, HTTP `status`, and a message (never a secret)."""

    def __init__(self, code: str, message: str, status: int = 400, sender: bool = True):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status, self.sender = code, message, status, sender
        self.recorded = False


@dataclass
class Issued:
    """Credentials handed out by AssumeRoleWithWebIdentity (secrets kept out of repr)."""

    access_key: str
    secret_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: float
    role_arn: str
    session_name: str
    userid: str  # ${aws:userid}: <role id>:<role session name>
    arn: str  # arn:aws:sts::<account>:assumed-role/<role name>/<role session name>
    subject: str
    audience: str
    provider: str
    principal_tags: dict[str, str]


@dataclass
class SsmSession:
    session_id: str
    owner_userid: str
    owner_arn: str
    run_as: str | None
    target: str
    document: str
    started_at: float
    terminated_at: float | None = None


@dataclass
class Role:
    """What IAM knows of a role: its trust (who may assume it) and its maximum session duration."""

    subject_like: str | tuple[str, ...] = "*"
    allow_tag_session: bool = True
    max_session_duration: int = 3600


def default_shell(run_as: str) -> list[str]:
    """The agent's Run As: a login shell as that POSIX user (as root); otherwise our own login shell."""
    if os.geteuid() == 0:
        return ["runuser", "-u", run_as, "--", "/bin/bash", "--login"]
    return ["/bin/bash", "--login"]


def _no_run_as_shell(why: str) -> list[str]:
    # What the agent does when Run As is on and it has no user: the session opens, says why, and ends.
    return ["/bin/sh", "-c", f"printf '%s\\r\\n' {_sh_quote(why)}; exit 1"]


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _random_id(prefix: str, length: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length))


class AwsControlPlane:
    """STS + SSM session calls on 127.0.0.1:<port>, backed by an SSM emulator.

    `emulator`: a tests.ssm_emulator.ThreadedEmulator (run_in_thread), or an SsmEmulator together with
    the event loop it runs on (`loop=`; by default the loop running when the stand-in starts).
    Point both `endpoint_url` and `sts_endpoint_url` of the cluster at `.url`.
    """

    def __init__(
        self,
        emulator: Any,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        issuer: str | None = None,
        audiences: tuple[str, ...] | list[str] = (DEFAULT_AUDIENCE,),
        region: str = "us-east-1",
        account_id: str = DEFAULT_ACCOUNT,
        roles: dict[str, Role] | None = None,
        documents: tuple[str, ...] | list[str] = DEFAULT_DOCUMENTS,
        shell_for: Callable[[str], list[str]] = default_shell,
        shell_env: Callable[[str], dict[str, str] | None] | None = None,
        clock_skew: int = 0,
        jwks_cache_seconds: float = 60.0,
        fetch_timeout: float = 5.0,
        emulator_timeout: float = 30.0,
    ):
        if hasattr(emulator, "emulator") and hasattr(emulator, "loop"):  # ThreadedEmulator
            self.emulator, self._loop = emulator.emulator, emulator.loop
        else:
            self.emulator, self._loop = emulator, loop
        self.issuer = issuer.rstrip("/") if issuer else None
        self.audiences = tuple(audiences)
        self.region = region
        self.account_id = account_id
        self.roles = roles  # None: any well-formed role ARN, trusting every subject
        self.documents = tuple(documents)
        self.shell_for = shell_for
        self.shell_env = shell_env
        self.clock_skew = clock_skew
        self.jwks_cache_seconds = jwks_cache_seconds
        self.fetch_timeout = fetch_timeout
        self.emulator_timeout = emulator_timeout
        self.calls: list[dict] = []
        # Subjects or token ids (jti) the identity provider has revoked: STS answers IDPRejectedClaim.
        self.rejected_claims: set[str] = set()
        self.issued: dict[str, Issued] = {}
        self.sessions: dict[str, SsmSession] = {}
        self.jwks_fetches = 0
        self._role_ids: dict[str, str] = {}
        self._jwks: dict[str, tuple[float, dict]] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AwsControlPlane:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()  # an SsmEmulator on the caller's loop
        handler = type("Handler", (_Handler,), {"plane": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="aws-control-plane", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> AwsControlPlane:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- helpers for tests ------------------------------------------------------------------------
    def operations(self, service: str | None = None) -> list[str]:
        with self._lock:
            return [c["operation"] for c in self.calls if service is None or c["service"] == service]

    def expire_credentials(self, access_key: str | None = None) -> int:
        """Make issued credentials (all, or one access key) expired, as time would."""
        with self._lock:
            keys = [k for k in self.issued if access_key is None or k == access_key]
            for key in keys:
                self.issued[key].expiration = time.time() - 1
        return len(keys)

    def secrets(self) -> list[str]:
        """Every secret handed out (secret keys, session tokens, stream tokens): tests check logs for them."""
        with self._lock:
            found = [s for i in self.issued.values() for s in (i.secret_key, i.session_token)]
        return found + list(getattr(self.emulator, "issued_tokens", []))

    def _record(self, entry: dict) -> None:
        with self._lock:
            self.calls.append(entry)

    # --- the emulator (its state lives on its own event loop) ---------------------------------------
    def _on_emulator_loop(self, fn: Callable, *args, **kwargs):
        async def run():
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(self.emulator_timeout)

    def _await_on_emulator_loop(self, make_coro: Callable[[], Any]):
        async def run():
            return await make_coro()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(self.emulator_timeout)

    # === STS =======================================================================================
    def handle_sts(self, form: dict[str, str]) -> str:
        action = form.get("Action", "")
        if form.get("Version") != STS_VERSION:
            raise AwsFault("InvalidParameterValue" if form.get("Version") else "MissingParameter",
                           f"The Version parameter must be {STS_VERSION}.")
        if action != "AssumeRoleWithWebIdentity":
            raise AwsFault("InvalidAction", f"Could not find operation {action or '(none)'} for version {STS_VERSION}")
        params = {k: v for k, v in form.items() if k not in ("Action", "Version")}
        entry = {"service": "sts", "operation": action, "caller": None,
                 "params": {k: v for k, v in params.items() if k != "WebIdentityToken"}, "outcome": None}
        try:
            issued = self._assume_role_with_web_identity(params, entry)
        except AwsFault as fault:
            entry["outcome"] = fault.code
            self._record(entry)
            raise
        entry["outcome"] = "ok"
        entry["access_key"] = issued.access_key
        entry["run_as"] = issued.principal_tags.get(RUN_AS_TAG)
        self._record(entry)
        return self._assume_response(issued)

    def _assume_role_with_web_identity(self, params: dict[str, str], entry: dict) -> Issued:
        unknown = sorted(set(params) - {"RoleArn", "RoleSessionName", "WebIdentityToken", "DurationSeconds",
                                        "ProviderId", "Policy", "MinimumSessionTokenSize"}
                         - {k for k in params if k.startswith("PolicyArns.")})
        if unknown:
            raise AwsFault("ValidationError", f"Unknown parameter(s): {', '.join(unknown)}")
        for name in ("RoleArn", "RoleSessionName", "WebIdentityToken"):
            if not params.get(name):
                raise AwsFault("MissingParameter", f"The request must contain the parameter {name}")
        role_arn, session_name, token = params["RoleArn"], params["RoleSessionName"], params["WebIdentityToken"]
        errors = []
        if not _SESSION_NAME.match(session_name):
            errors.append(f"Value '{session_name}' at 'roleSessionName' failed to satisfy constraint: Member must "
                          "satisfy regular expression pattern: [\\w+=,.@-]* and have length between 2 and 64")
        duration = 3600
        if "DurationSeconds" in params:
            try:
                duration = int(params["DurationSeconds"])
            except ValueError:
                errors.append("Value at 'durationSeconds' failed to satisfy constraint: Member must be an integer")
            else:
                if not 900 <= duration <= 43200:
                    errors.append(f"Value '{duration}' at 'durationSeconds' failed to satisfy constraint: Member must "
                                  "have value between 900 and 43200")
        if not 4 <= len(token) <= 20000:
            errors.append("Value at 'webIdentityToken' failed to satisfy constraint: Member must have length between 4 and 20000")
        if errors:
            raise AwsFault("ValidationError", f"{len(errors)} validation error{'s' if len(errors) > 1 else ''} detected: "
                           + "; ".join(errors))
        arn = _ROLE_ARN.match(role_arn)
        if not arn:
            raise AwsFault("ValidationError", "Request ARN is invalid")

        claims = self._verify_token(token)
        entry["caller"] = f"web-identity:{claims['sub']}"

        role = self._role(role_arn)
        patterns = (role.subject_like,) if isinstance(role.subject_like, str) else role.subject_like
        if not any(fnmatch.fnmatchcase(claims["sub"], p) for p in patterns):
            raise AwsFault("AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity", 403)
        tags = self._session_tags(claims)
        if tags and not role.allow_tag_session:
            raise AwsFault("AccessDenied", "Not authorized to perform sts:TagSession", 403)
        if duration > role.max_session_duration:
            raise AwsFault("ValidationError", "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.")

        partition, account, role_name = arn.group(1), arn.group(2), arn.group(3)
        with self._lock:
            role_id = self._role_ids.setdefault(role_arn, _random_id("AROA", 17))
        aud = claims["aud"]
        issued = Issued(
            access_key=_random_id("ASIA", 16),
            secret_key=base64.b64encode(secrets.token_bytes(30)).decode(),
            session_token=base64.b64encode(b"FwoGZXIvYXdzE" + secrets.token_bytes(240)).decode(),
            expiration=time.time() + duration,
            role_arn=role_arn,
            session_name=session_name,
            userid=f"{role_id}:{session_name}",
            arn=f"arn:{partition}:sts::{account}:assumed-role/{role_name}/{session_name}",
            subject=claims["sub"],
            audience=aud if isinstance(aud, str) else next(a for a in aud if a in self.audiences),
            provider=claims["iss"],
            principal_tags=tags,
        )
        with self._lock:
            self.issued[issued.access_key] = issued
        return issued

    def _role(self, role_arn: str) -> Role:
        if self.roles is None:
            return Role()
        role = self.roles.get(role_arn)
        if role is None:  # AWS does not say whether the role exists
            raise AwsFault("AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity", 403)
        return role

    def _verify_token(self, token: str) -> dict:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AwsFault("InvalidIdentityToken", "Couldn't parse the web identity token.") from None
        iss = unverified.get("iss")
        if not isinstance(iss, str) or not iss:
            raise AwsFault("InvalidIdentityToken", "The web identity token has no iss claim.")
        if self.issuer is not None and iss.rstrip("/") != self.issuer:
            raise AwsFault("InvalidIdentityToken", f"No OpenIDConnect provider found in your account for {iss}")
        alg = header.get("alg")
        if alg not in SIGNING_ALGORITHMS:
            raise AwsFault("InvalidIdentityToken", f"The web identity token's signing algorithm {alg!r} is not supported.")
        key = self._signing_key(iss, header.get("kid"))
        try:
            claims = jwt.decode(token, key=key, algorithms=[alg],
                                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                                         "verify_aud": False, "verify_iss": False})
        except jwt.InvalidSignatureError:
            raise AwsFault("InvalidIdentityToken", "The web identity token's signature could not be verified.") from None
        except jwt.PyJWTError:
            raise AwsFault("InvalidIdentityToken", "Couldn't parse the web identity token.") from None
        now = time.time()
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, int | float):
            raise AwsFault("InvalidIdentityToken", "The web identity token has no exp claim.")
        if now >= exp + self.clock_skew:
            raise AwsFault("ExpiredTokenException", f"Token expired: current date/time {int(now)} must be before the "
                           f"expiration date/time {int(exp)}")
        if isinstance(nbf, int | float) and now + self.clock_skew < nbf:
            raise AwsFault("InvalidIdentityToken", "The web identity token is not valid yet (nbf).")
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not any(a in self.audiences for a in auds):
            raise AwsFault("InvalidIdentityToken", "Incorrect token audience")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not 6 <= len(sub) <= 255:
            raise AwsFault("InvalidIdentityToken", "The web identity token's sub claim is missing or not 6–255 characters.")
        if sub in self.rejected_claims or claims.get("jti") in self.rejected_claims:
            raise AwsFault("IDPRejectedClaim", "The identity provider reported that the claim was revoked.", 403)
        return claims

    def _signing_key(self, iss: str, kid: str | None):
        try:
            jwks = self._provider_keys(iss, refresh=False)
            key = _pick_key(jwks, kid)
            if key is None:  # a new key since we last looked
                key = _pick_key(self._provider_keys(iss, refresh=True), kid)
        except (URLError, TimeoutError, OSError) as exc:
            if isinstance(exc, HTTPError):
                raise AwsFault("InvalidIdentityToken", "Couldn't retrieve verification key from your identity provider, "
                               "please reference AssumeRoleWithWebIdentity documentation for requirements") from None
            raise AwsFault("IDPCommunicationError", "Communication with the identity provider failed: "
                           f"{type(exc).__name__}") from None
        except ValueError:
            raise AwsFault("InvalidIdentityToken", "Couldn't retrieve verification key from your identity provider, "
                           "please reference AssumeRoleWithWebIdentity documentation for requirements") from None
        if key is None:
            raise AwsFault("InvalidIdentityToken", "The identity provider's JWKS has no key for this token "
                           f"(kid {kid!r}).")
        return key

    def _fetch_json(self, url: str) -> dict:
        request = Request(url, headers={"Accept": "application/json", "User-Agent": "aws-control-plane-stand-in"})
        with urlopen(request, timeout=self.fetch_timeout) as response:  # noqa: S310 (tests: 127.0.0.1)
            body = json.loads(response.read(1 << 20))
        if not isinstance(body, dict):
            raise ValueError(f"{url} is not a JSON object")
        return body

    def _provider_keys(self, iss: str, *, refresh: bool) -> dict:
        with self._lock:
            cached = self._jwks.get(iss)
        if cached is not None and not refresh and time.monotonic() - cached[0] < self.jwks_cache_seconds:
            return cached[1]
        config = self._fetch_json(f"{iss.rstrip('/')}/.well-known/openid-configuration")
        if str(config.get("issuer", "")).rstrip("/") != iss.rstrip("/"):
            raise ValueError("the discovery document names another issuer")
        jwks_uri = config.get("jwks_uri")
        if not isinstance(jwks_uri, str) or urlsplit(jwks_uri).scheme not in ("http", "https"):
            raise ValueError("the discovery document has no jwks_uri")
        jwks = self._fetch_json(jwks_uri)
        if not isinstance(jwks.get("keys"), list):
            raise ValueError("the JWKS has no keys")
        with self._lock:
            self._jwks[iss] = (time.monotonic(), jwks)
            self.jwks_fetches += 1
        return jwks

    @staticmethod
    def _session_tags(claims: dict) -> dict[str, str]:
        raw = claims.get(TAGS_CLAIM)
        if raw is None:
            return {}
        bad = AwsFault("InvalidIdentityToken", f"The {TAGS_CLAIM} claim is not valid session tags.")
        if not isinstance(raw, dict) or not isinstance(raw.get("principal_tags", {}), dict):
            raise bad
        principal = raw.get("principal_tags", {})
        transitive = raw.get("transitive_tag_keys", [])
        if len(principal) > 50 or not isinstance(transitive, list):
            raise bad
        tags = {}
        for key, value in principal.items():
            if isinstance(value, list) and len(value) == 1:
                value = value[0]
            if (not isinstance(key, str) or not 1 <= len(key) <= 128 or not _TAG_TEXT.match(key)
                    or key.lower().startswith("aws:") or not isinstance(value, str) or len(value) > 256
                    or not _TAG_TEXT.match(value)):
                raise bad
            tags[key] = value
        if any(k not in tags for k in transitive):
            raise bad
        return tags

    @staticmethod
    def _assume_response(issued: Issued) -> str:
        e = escape
        return (
            f'<AssumeRoleWithWebIdentityResponse xmlns="{STS_NAMESPACE}">\n'
            "  <AssumeRoleWithWebIdentityResult>\n"
            f"    <SubjectFromWebIdentityToken>{e(issued.subject)}</SubjectFromWebIdentityToken>\n"
            f"    <Audience>{e(issued.audience)}</Audience>\n"
            "    <AssumedRoleUser>\n"
            f"      <Arn>{e(issued.arn)}</Arn>\n"
            f"      <AssumedRoleId>{e(issued.userid)}</AssumedRoleId>\n"
            "    </AssumedRoleUser>\n"
            "    <Credentials>\n"
            f"      <SessionToken>{e(issued.session_token)}</SessionToken>\n"
            f"      <SecretAccessKey>{e(issued.secret_key)}</SecretAccessKey>\n"
            f"      <Expiration>{_iso(issued.expiration)}</Expiration>\n"
            f"      <AccessKeyId>{e(issued.access_key)}</AccessKeyId>\n"
            "    </Credentials>\n"
            f"    <Provider>{e(issued.provider)}</Provider>\n"
            f"    <PackedPolicySize>{min(99, 6 * len(issued.principal_tags))}</PackedPolicySize>\n"
            "  </AssumeRoleWithWebIdentityResult>\n"
            "  <ResponseMetadata>\n"
            f"    <RequestId>{uuid.uuid4()}</RequestId>\n"
            "  </ResponseMetadata>\n"
            "</AssumeRoleWithWebIdentityResponse>\n"
        )

    # === SSM =======================================================================================
    def authenticate(self, method: str, path: str, headers, body: bytes) -> Issued:
        """SigV4 as AWS checks it, for credentials this stand-in issued."""
        authorization = headers.get("Authorization")
        if not authorization:
            raise AwsFault("MissingAuthenticationTokenException", "Missing Authentication Token")
        match = _AUTHORIZATION.match(authorization.strip())
        if not match:
            raise AwsFault("IncompleteSignatureException", "Authorization header requires 'Credential', "
                           "'SignedHeaders' and 'Signature' parameters of AWS4-HMAC-SHA256.")
        access_key, date, region, service, signed_headers, signature = match.groups()
        with self._lock:
            issued = self.issued.get(access_key)
        if issued is None:
            raise AwsFault("UnrecognizedClientException", "The security token included in the request is invalid.")
        token = headers.get("X-Amz-Security-Token")
        if token is None or not hmac.compare_digest(token.encode(), issued.session_token.encode()):
            raise AwsFault("UnrecognizedClientException", "The security token included in the request is invalid.")
        if time.time() >= issued.expiration:
            raise AwsFault("ExpiredTokenException", "The security token included in the request is expired")
        if service != "ssm":
            raise AwsFault("InvalidSignatureException", "Credential should be scoped to correct service: 'ssm'.")
        if region != self.region:
            raise AwsFault("InvalidSignatureException", f"Credential should be scoped to a valid region, not '{region}'.")
        amz_date = headers.get("X-Amz-Date", "")
        try:
            when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
        except ValueError:
            raise AwsFault("IncompleteSignatureException", "The request must carry an X-Amz-Date header "
                           "(yyyyMMdd'T'HHmmss'Z').") from None
        if amz_date[:8] != date:
            raise AwsFault("InvalidSignatureException", "Date in Credential scope does not match YYYYMMDD from ISO-8601 "
                           "version of date from HTTP")
        if abs(time.time() - when) > MAX_REQUEST_SKEW:
            raise AwsFault("InvalidSignatureException", f"Signature expired: {amz_date} is now earlier or later than "
                           "5 minutes from the server's time.")
        names = signed_headers.split(";")
        required = {"host", "x-amz-date", "x-amz-security-token", "x-amz-target", "content-type"}
        if names != sorted(names) or not required <= set(names):
            raise AwsFault("InvalidSignatureException", "SignedHeaders must be sorted and include "
                           + ", ".join(sorted(required)) + ".")
        signed = {}
        for name in names:
            values = headers.get_all(name)
            if not values:
                raise AwsFault("InvalidSignatureException", f"The signed header {name} is missing from the request.")
            signed[name] = ",".join(values)
        request = AWSRequest(method=method, url=f"http://{signed['host']}{path}", data=body, headers=signed)
        request.context["timestamp"] = amz_date
        signer = SigV4Auth(Credentials(issued.access_key, issued.secret_key, issued.session_token), "ssm", region)
        canonical = signer.canonical_request(request)
        if signer.signed_headers(signer.headers_to_sign(request)) != signed_headers:
            raise AwsFault("InvalidSignatureException", "SignedHeaders cannot be reproduced.")
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if not hmac.compare_digest(expected, signature):
            raise AwsFault("InvalidSignatureException", "The request signature we calculated does not match the "
                           "signature you provided. Check your AWS Secret Access Key and signing method. Consult the "
                           "service documentation for details.")
        return issued

    def handle_ssm(self, operation: str, caller: Issued, params: Any) -> dict:
        entry = {"service": "ssm", "operation": operation, "caller": caller.arn,
                 "params": params if isinstance(params, dict) else {}, "outcome": None}
        try:
            if not isinstance(params, dict):
                raise AwsFault("SerializationException", "The request body must be a JSON object.")
            result = getattr(self, f"_ssm_{operation}")(caller, params, entry)
        except AwsFault as fault:
            entry["outcome"] = fault.code
            fault.recorded = True
            self._record(entry)
            raise
        entry["outcome"] = "ok"
        self._record(entry)
        return result

    def _check(self, params: dict, allowed: dict[str, type], required: tuple[str, ...]) -> None:
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise AwsFault("ValidationException", f"Unknown parameter(s) {', '.join(unknown)}")
        for name in required:
            if name not in params:
                member = name[0].lower() + name[1:]
                raise AwsFault("ValidationException", f"1 validation error detected: Value null at '{member}' failed to "
                               "satisfy constraint: Member must not be null")
        for name, kind in allowed.items():
            if name in params and not isinstance(params[name], kind):
                raise AwsFault("SerializationException", f"{name} has the wrong type")

    def _ssm_StartSession(self, caller: Issued, params: dict, entry: dict) -> dict:
        self._check(params, {"Target": str, "DocumentName": str, "Reason": str, "Parameters": dict}, ("Target",))
        target = params["Target"]
        document = params.get("DocumentName", "SSM-SessionManagerRunShell")
        if not 1 <= len(target) <= 400:
            raise AwsFault("ValidationException", "1 validation error detected: Value at 'target' failed to satisfy "
                           "constraint: Member must have length between 1 and 400")
        if not _DOCUMENT.match(document):
            raise AwsFault("ValidationException", f"1 validation error detected: Value '{document}' at 'documentName' "
                           "failed to satisfy constraint: Member must satisfy regular expression pattern: "
                           "^[a-zA-Z0-9_\\-.:/]{3,128}$")
        if "Reason" in params and not _REASON.match(params["Reason"]):
            raise AwsFault("ValidationException", "1 validation error detected: Value at 'reason' failed to satisfy "
                           "constraint: Member must satisfy regular expression pattern: ^.{1,256}$")
        for name, values in params.get("Parameters", {}).items():
            if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
                raise AwsFault("ValidationException", f"Parameters.{name} must be a list of non-empty strings")
        if target != self.emulator.target:
            raise AwsFault("TargetNotConnected", f"{target} is not connected.")
        if document.rsplit("/", 1)[-1] not in self.documents:
            raise AwsFault("InvalidDocument", f"Document with name {document} does not exist.")
        run_as = caller.principal_tags.get(RUN_AS_TAG)
        if run_as is None:
            argv = _no_run_as_shell("Unable to start command: the Run As user is not set (no SSMSessionRunAs tag).")
        elif run_as == "root" or not _POSIX_NAME.match(run_as):
            argv = _no_run_as_shell(f"Unable to start command: {run_as!r} cannot be a Run As user.")
        else:
            argv = list(self.shell_for(run_as))
        env = self.shell_env(run_as) if (self.shell_env is not None and run_as) else None
        session_id = f"{caller.session_name}-{secrets.token_hex(9)[:17]}"
        sid, stream_url, token = self._on_emulator_loop(self.emulator.start_session, session_id, argv=argv, env=env)
        with self._lock:
            self.sessions[sid] = SsmSession(sid, caller.userid, caller.arn, run_as, target, document, time.time())
        entry.update(session_id=sid, run_as=run_as)
        return {"SessionId": sid, "TokenValue": token, "StreamUrl": stream_url}

    def _owned_session(self, caller: Issued, params: dict, action: str) -> SsmSession | None:
        self._check(params, {"SessionId": str}, ("SessionId",))
        session_id = params["SessionId"]
        if not 1 <= len(session_id) <= 96:
            raise AwsFault("ValidationException", "1 validation error detected: Value at 'sessionId' failed to satisfy "
                           "constraint: Member must have length between 1 and 96")
        with self._lock:
            session = self.sessions.get(session_id)
        owner = session.owner_userid if session else None
        # The least-privilege policy (aws_bootstrap): only session/${aws:userid}-* and sessions tagged with the
        # caller's ${aws:userid}. A session of someone else (or a name that is not the caller's) is denied.
        mine = owner == caller.userid if owner is not None else session_id.startswith(caller.session_name + "-")
        if not mine:
            raise AwsFault("AccessDeniedException", f"User: {caller.arn} is not authorized to perform: ssm:{action} on "
                           f"resource: arn:aws:ssm:{self.region}:{self.account_id}:session/{session_id} because no "
                           f"identity-based policy allows the ssm:{action} action")
        return session

    def _ssm_ResumeSession(self, caller: Issued, params: dict, entry: dict) -> dict:
        session = self._owned_session(caller, params, "ResumeSession")
        entry["session_id"] = params["SessionId"]
        ended = session is None or session.terminated_at is not None or self._on_emulator_loop(
            lambda sid: getattr(self.emulator.sessions.get(sid), "ended", True), params["SessionId"])
        if ended:
            raise AwsFault("DoesNotExistException", f"Session with id {params['SessionId']} does not exist or is terminated.")
        stream_url, token = self._on_emulator_loop(self.emulator.resume_session, session.session_id)
        return {"SessionId": session.session_id, "TokenValue": token, "StreamUrl": stream_url}

    def _ssm_TerminateSession(self, caller: Issued, params: dict, entry: dict) -> dict:
        session = self._owned_session(caller, params, "TerminateSession")
        session_id = params["SessionId"]
        entry["session_id"] = session_id
        if session is not None:
            if session.terminated_at is None:
                session.terminated_at = time.time()
            entry["was_running"] = self._await_on_emulator_loop(lambda: self._end_emulator_session(session_id))
        return {"SessionId": session_id}

    async def _end_emulator_session(self, session_id: str) -> bool:
        session = self.emulator.sessions.get(session_id)
        if session is None or session.ended:
            return False
        await self.emulator.close_channel(session_id, "Session is terminated.")
        return True


def _pick_key(jwks: dict, kid: str | None):
    keys = [k for k in jwks.get("keys", []) if isinstance(k, dict) and k.get("kty") == "RSA"
            and k.get("use", "sig") == "sig"]
    if kid is not None:
        keys = [k for k in keys if k.get("kid") == kid]
    elif len(keys) != 1:
        return None
    if not keys:
        return None
    try:
        return jwt.PyJWK(keys[0], algorithm=keys[0].get("alg") or "RS256").key
    except jwt.PyJWTError:
        raise ValueError("unusable JWK") from None


class _Handler(BaseHTTPRequestHandler):
    plane: AwsControlPlane
    protocol_version = "HTTP/1.1"
    server_version = "aws-control-plane-stand-in"

    def log_message(self, format, *args):  # noqa: A002 - no request logging (bodies carry tokens)
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.end_headers()
        self.wfile.write(body)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self):  # noqa: N802
        self._send(405, b'{"message":"Method Not Allowed"}', "application/json")

    def do_POST(self):  # noqa: N802
        body = self._read_body()
        target = self.headers.get("X-Amz-Target")
        if target is not None:
            self._ssm(target, body)
        else:
            self._sts(body)

    # --- STS ---
    def _sts(self, body: bytes) -> None:
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        try:
            if self.path != "/" or content_type != "application/x-www-form-urlencoded":
                raise AwsFault("InvalidAction", "STS takes a form-encoded POST to /.")
            form = {k: v[0] for k, v in parse_qs(body.decode("utf-8"), keep_blank_values=True).items()}
            answer = self.plane.handle_sts(form).encode()
        except AwsFault as fault:
            error = (
                f'<ErrorResponse xmlns="{STS_NAMESPACE}">\n'
                f"  <Error>\n    <Type>{'Sender' if fault.sender else 'Receiver'}</Type>\n"
                f"    <Code>{escape(fault.code)}</Code>\n    <Message>{escape(fault.message)}</Message>\n  </Error>\n"
                f"  <RequestId>{uuid.uuid4()}</RequestId>\n</ErrorResponse>\n"
            )
            self._send(fault.status, error.encode(), "text/xml")
            return
        except Exception as exc:  # a bug here must not look like an AWS answer
            self._send(500, f"<ErrorResponse><Error><Code>InternalFailure</Code><Message>{escape(type(exc).__name__)}"
                            "</Message></Error></ErrorResponse>".encode(), "text/xml")
            return
        self._send(200, answer, "text/xml")

    # --- SSM ---
    def _ssm(self, target: str, body: bytes) -> None:
        try:
            prefix, _, operation = target.partition(".")
            if prefix != "AmazonSSM" or operation not in _SSM_OPERATIONS:
                raise AwsFault("UnknownOperationException", f"Operation {target} is not supported by this stand-in.")
            if self.path != "/":
                raise AwsFault("UnknownOperationException", "SSM takes POST /.")
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if content_type != JSON_CONTENT_TYPE:
                raise AwsFault("SerializationException", f"Content-Type must be {JSON_CONTENT_TYPE}.")
            caller = self.plane.authenticate("POST", self.path, self.headers, body)
            try:
                params = json.loads(body or b"{}")
            except ValueError:
                raise AwsFault("SerializationException", "The request body is not JSON.") from None
            result = self.plane.handle_ssm(operation, caller, params)
        except AwsFault as fault:
            if not fault.recorded:  # refused before the operation ran (authentication, protocol)
                self.plane._record({"service": "ssm", "operation": target.partition(".")[2], "caller": None,
                                    "params": {}, "outcome": fault.code})
            payload = json.dumps({"__type": fault.code, "message": fault.message}).encode()
            self._send(fault.status, payload, JSON_CONTENT_TYPE)
            return
        except Exception as exc:
            payload = json.dumps({"__type": "InternalServerError", "message": type(exc).__name__}).encode()
            self._send(500, payload, JSON_CONTENT_TYPE)
            return
        self._send(200, json.dumps(result).encode(), JSON_CONTENT_TYPE)


__all__ = ["AwsControlPlane", "AwsFault", "Issued", "Role", "SsmSession", "default_shell"]
