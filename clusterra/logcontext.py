"""Log context and log hygiene: who and what a log line is about, and never a secret in it.

Context lives in one contextvar, so it follows a request through async code and threads
(asgiref copies it), and each Celery task gets its own:

    from clusterra import logcontext

    logcontext.bind(session_id=str(session.id))          # from here on in this task/context
    with logcontext.bound(cluster="acme/hpc"):           # only inside the block
        logger.info("...")

RequestContextMiddleware binds `request_id` (X-Request-ID from the proxy only with
CLUSTERRA_TRUST_REQUEST_ID, else a fresh one; echoed in the response) and the request, from which
ContextFilter derives `tenant` (the URL's tenant_slug, or the API token's tenant) and `user_id` (once
something has resolved the user; a log line never triggers a query). clusterra/celery.py carries
`request_id` into tasks and binds `task_id`/`task`.

RedactFilter and the formatters keep secrets out of every line: values of keys that look secret
(password, token, key, secret, signature, cookie, authorization, credential; OIDC code/state; SSM
TokenValue/StreamUrl) in extra fields at any depth, and recognisable secrets in messages and tracebacks
(Bearer/Basic credentials, the portal's API tokens, JWTs, `name=value` pairs with such names). Don't use
`code` or `state` as extra field names for other things (say `close_code`).
"""

import contextlib
import logging
import re
import uuid
from collections.abc import Mapping
from contextvars import ContextVar
from types import MappingProxyType

from django.conf import settings
from django.utils.functional import LazyObject, empty
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from clusterra.ops import HybridMiddleware

_context: ContextVar[Mapping] = ContextVar("clusterra_log_context", default=MappingProxyType({}))  # replaced, never mutated

REDACTED = "[REDACTED]"


# --- context -------------------------------------------------------------------------------------
def bind(**fields):
    """Add fields to the current context; returns a token for reset()."""
    return _context.set({**_context.get(), **fields})


def reset(token) -> None:
    _context.reset(token)


def unbind(*names: str) -> None:
    ctx = _context.get()
    _context.set({k: v for k, v in ctx.items() if k not in names})


@contextlib.contextmanager
def bound(**fields):
    token = bind(**fields)
    try:
        yield
    finally:
        _context.reset(token)


def current() -> dict:
    """The context's public fields (what a log line would carry), including those derived from the request."""
    ctx = _context.get()
    fields = {k: v for k, v in ctx.items() if not k.startswith("_")}
    request = ctx.get("_request")
    if request is not None:
        _add_request_fields(fields, request)
    return {k: v for k, v in fields.items() if v is not None}


def _add_request_fields(fields: dict, request) -> None:
    fields.setdefault("request_id", getattr(request, "request_id", None))
    if fields.get("tenant") is None:
        match = getattr(request, "resolver_match", None)
        tenant = match.kwargs.get("tenant_slug") if match is not None else None
        api_tenant = getattr(request, "api_tenant", None)  # a Bearer request (jobs/api.py TokenAuth)
        fields["tenant"] = tenant or getattr(api_tenant, "slug", None)
    if fields.get("user_id") is None:
        fields["user_id"] = _resolved_user_id(request)


def _resolved_user_id(request):
    user = request.__dict__.get("user")
    if isinstance(user, LazyObject):
        user = user._wrapped if user._wrapped is not empty else request.__dict__.get("_acached_user")
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return user.pk


class ContextFilter(logging.Filter):
    """Adds the context's fields to each record (as attributes, and as `context` text for plain lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _context.get()
        fields = {k: v for k, v in ctx.items() if not k.startswith("_")}
        # django.request logs a failed response after the middleware has left: take its `request`.
        request = ctx.get("_request") or _as_request(record.__dict__.get("request"))
        if request is not None:
            _add_request_fields(fields, request)
        parts = []
        for key, value in fields.items():
            if value is None:
                continue
            if key not in record.__dict__:
                setattr(record, key, value)
            parts.append(f"{key}={value}")
        record.context = f" [{' '.join(parts)}]" if parts else ""
        return True


def _as_request(value):
    return value if value is not None and hasattr(value, "META") and hasattr(value, "path") else None


# --- redaction -----------------------------------------------------------------------------------
_SENSITIVE_KEY = re.compile(r"(?i)(pass|secret|token|key|signature|cookie|authorization|credential|streamurl)")
_SENSITIVE_EXACT = {"code", "state", "sessionid"}  # OIDC; Django's session cookie (case-sensitive: not SSM's SessionId)
_SECRET_NAME = re.compile(r"(?i)(pass|secret|token|key|signature|cookie|authorization|credential|streamurl|sessionid)")
# Cheap substring tests first (a case-insensitive regex alternation costs far more): most lines hold
# nothing that any pattern below could match.
_TRIGGERS = ("bearer", "basic", "ctk_", "eyj", "pass", "secret", "token", "key", "signature", "cookie", "authoriz",
             "credential", "streamurl", "sessionid", "code=", "state=")
_PAIR = re.compile(r"""(?<![\w.-])([\w.-]+["']?\s*[=:]\s*["']?)(?!\[REDACTED\])([^\s&"',;]+)""")


def _redact_pair(match) -> str:
    if _SECRET_NAME.search(match.group(1)):
        return match.group(1) + REDACTED
    return match.group(1) + _PAIR.sub(_redact_pair, match.group(2))  # "said: secret_key=..." holds another pair


_TEXT_PATTERNS = [
    # Authorization header values
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{6,}"), r"\1\2" + REDACTED),
    # the portal's API tokens, ctk_<prefix>_<secret> (accounts/services.py): the prefix identifies, the rest is secret
    (re.compile(r"\b(ctk_[0-9a-f]{12}_)[A-Za-z0-9_-]+"), r"\1" + REDACTED),
    # JWTs (OIDC id_token, the tokens the portal signs for STS)
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), REDACTED),
    # name=value / "name": "value" with a secret-looking name
    (_PAIR, _redact_pair),
    # OIDC code/state in a query string
    (re.compile(r"(?i)([?&](?:code|state|id_token|access_token|refresh_token|session_state)=)[^&\s\"']+"), r"\1" + REDACTED),
]


def redact_text(text: str) -> str:
    lowered = text.lower()
    if not any(trigger in lowered for trigger in _TRIGGERS):
        return text
    for pattern, replacement in _TEXT_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _sensitive_key(key) -> bool:
    key = str(key)
    return key in _SENSITIVE_EXACT or bool(_SENSITIVE_KEY.search(key))


def redact_value(value, _depth: int = 0):
    """A copy of `value` with secret-looking keys and text redacted (dicts, lists and tuples at any depth)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes):
        return redact_text(value.decode("utf-8", "replace"))
    if _depth > 6:
        return "..."
    if isinstance(value, dict):
        return {k: REDACTED if _sensitive_key(k) else redact_value(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        # header lists [(b"authorization", b"Bearer ..."), ...] as in an ASGI scope
        if len(value) == 2 and isinstance(value[0], (str, bytes)) and _sensitive_key(
                value[0].decode("latin-1") if isinstance(value[0], bytes) else value[0]):
            return [redact_value(value[0], _depth + 1), REDACTED]
        return [redact_value(v, _depth + 1) for v in value]
    request = _as_request(value)
    if request is not None:
        return redact_text(f"{request.method} {request.path}")  # never the query string, headers or body
    return value


_STANDARD_ATTRS = set(RESERVED_ATTRS) | {"taskName", "context", "message", "asctime"}


class RedactFilter(logging.Filter):
    """Redacts the message (formatted once, here) and every extra field of the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, dict):
            record.msg = redact_value(record.msg)
        else:
            try:
                message = record.getMessage()
            except Exception:  # a bad format string: let the formatter report it as usual
                return True
            record.msg, record.args = redact_text(message), None
        if record.exc_text:  # a traceback another handler formatted (and cached) first
            record.exc_text = redact_text(record.exc_text)
        for key, value in list(record.__dict__.items()):
            if key in _STANDARD_ATTRS or value is None:
                continue
            if _sensitive_key(key):
                record.__dict__[key] = REDACTED
            elif not isinstance(value, (int, float, bool)):
                record.__dict__[key] = redact_value(value)
        return True


class PlainFormatter(logging.Formatter):
    """The demo's line format; tracebacks redacted like messages."""

    def formatException(self, ei) -> str:
        return redact_text(super().formatException(ei))

    def formatStack(self, stack_info) -> str:
        return redact_text(super().formatStack(stack_info))


class JsonFormatter(_JsonFormatter):
    """One JSON object per line: time, level, logger, message, the context fields, extra fields, exc_info."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        kwargs.setdefault("timestamp", "time")
        kwargs.setdefault("reserved_attrs", sorted(_STANDARD_ATTRS))
        super().__init__(*args or ("%(levelname)s %(name)s %(message)s",), **kwargs)

    def formatException(self, ei) -> str:
        return redact_text(super().formatException(ei))

    def formatStack(self, stack_info) -> str:
        return redact_text(super().formatStack(stack_info))


# --- HTTP ----------------------------------------------------------------------------------------
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _start_request(request):
    request_id = None
    if settings.TRUST_REQUEST_ID:
        header = request.META.get("HTTP_X_REQUEST_ID", "")
        request_id = header if _REQUEST_ID.match(header) else None
    request.request_id = request_id or uuid.uuid4().hex
    return _context.set({**_context.get(), "request_id": request.request_id, "_request": request})


class RequestContextMiddleware(HybridMiddleware):
    """Binds the request id and the request for log lines; answers with X-Request-ID."""

    def call(self, request):
        token = _start_request(request)
        try:
            response = self.get_response(request)
        finally:
            _context.reset(token)
        response["X-Request-ID"] = request.request_id
        return response

    async def acall(self, request):
        token = _start_request(request)
        try:
            response = await self.get_response(request)
        finally:
            _context.reset(token)
        response["X-Request-ID"] = request.request_id
        return response
