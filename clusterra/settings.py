"""Clusterra settings, read from environment variables (see docs/configuration.md).

The embedded default (nothing set) runs on one machine: SQLite and recordings under the data directory,
an in-memory channel layer, local accounts. Production sets a database URL, Redis, and a secret key.
"""

import ipaddress
import secrets
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from csp.constants import NONCE, NONE, SELF, UNSAFE_INLINE
from django.core.exceptions import ImproperlyConfigured
from redis.backoff import NoBackoff
from redis.retry import Retry

from clusterra.env import env_bool, env_int, env_list, env_match, env_path, env_secret, env_str
from clusterra.files import private_dir, private_file, read_or_create_secret

BASE_DIR = Path(__file__).resolve().parent.parent

DATA_DIR = env_path("CLUSTERRA_DATA_DIR", BASE_DIR / "data")
DEBUG = env_bool("CLUSTERRA_DEBUG", False)


def _embedded_secret_key() -> str:
    """A random key kept in the data directory, so the embedded default needs no configuration."""
    private_dir(DATA_DIR)
    return read_or_create_secret(DATA_DIR / "secret_key", lambda: secrets.token_urlsafe(50))


SECRET_KEY = env_secret("CLUSTERRA_SECRET_KEY") or _embedded_secret_key()
if len(SECRET_KEY) < 32:
    raise ImproperlyConfigured("CLUSTERRA_SECRET_KEY must be at least 32 characters long")

ALLOWED_HOSTS = env_list("CLUSTERRA_ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
# Extra origins allowed for CSRF and for the terminal WebSocket (scheme://host[:port]).
TRUSTED_ORIGINS = env_list("CLUSTERRA_TRUSTED_ORIGINS", [])
for _origin in TRUSTED_ORIGINS:
    if not _origin.startswith(("http://", "https://")):
        raise ImproperlyConfigured(f"CLUSTERRA_TRUSTED_ORIGINS entries need a scheme, got {_origin!r}")
CSRF_TRUSTED_ORIGINS = TRUSTED_ORIGINS

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "csp",
    "ninja",  # /v1/docs from ninja's own static files (not a CDN), which the Content-Security-Policy allows
    "accounts",
    "clusters",
    "terminal",
    "jobs",
    "filebrowser",  # browse, view, upload, edit files as the user's POSIX account (docs/files.md)
    "audit",
    "scim",  # SCIM 2.0 provisioning at /scim/v2/ (docs/scim.md)
    "okta",
]

MIDDLEWARE = [
    "clusterra.ops.OpsEndpointsMiddleware",  # /healthz /readyz /metrics, before host checks, redirects and sessions
    "clusterra.api_errors.JsonApiErrorsMiddleware",  # every error under /v1/ as {"detail": ...}, even Django's own 404/500
    "clusterra.logcontext.RequestContextMiddleware",  # request id and context for log lines
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "clusterra.timezones.ViewerTimeZoneMiddleware",  # times in the viewer's zone (preference, else the browser's)
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "clusterra.urls"
ASGI_APPLICATION = "clusterra.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_database_url = env_str("CLUSTERRA_DATABASE_URL", f"sqlite:///{DATA_DIR / 'clusterra.sqlite3'}")
try:
    DATABASES = {"default": dj_database_url.parse(_database_url, conn_max_age=0)}
except Exception as exc:  # dj_database_url raises several types for a bad URL
    raise ImproperlyConfigured(f"CLUSTERRA_DATABASE_URL is not a valid database URL: {exc}") from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several processes write this file: the daphne workers and the Celery poller. WAL lets readers run beside
    # the one writer. IMMEDIATE takes the write lock at BEGIN, so a transaction that reads and then writes
    # (update_or_create) waits up to `timeout` seconds for it; in the default DEFERRED mode its upgrade to a
    # write lock fails at once with "database is locked", whatever the timeout. Keep transactions short.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    _sqlite_file = str(DATABASES["default"]["NAME"])
    if _sqlite_file and _sqlite_file != ":memory:" and not _sqlite_file.startswith("file:"):
        # Made 0600 before Django's first connection would create it with the umask's mode.
        private_dir(Path(_sqlite_file).parent)
        private_file(Path(_sqlite_file))

AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    # Local passwords (the demo's way; a tenant can turn them off), then each tenant's OIDC provider.
    "accounts.backends.PasswordBackend",
    "accounts.oidc.TenantOIDCBackend",
]
# --- Single sign-on (accounts/oidc.py; docs/configuration.md) ---------------------------------
# A single-IdP install names its IdP here; tenants may also have their own (admin console → Identity provider).
OIDC_ISSUER = env_str("CLUSTERRA_OIDC_ISSUER", "")
OIDC_CLIENT_ID = env_str("CLUSTERRA_OIDC_CLIENT_ID", "")
OIDC_CLIENT_SECRET = env_secret("CLUSTERRA_OIDC_CLIENT_SECRET", "")
OIDC_TENANT = env_str("CLUSTERRA_OIDC_TENANT", "demo")
OIDC_NAME = env_str("CLUSTERRA_OIDC_NAME", "your organisation")
OIDC_SCOPES = env_str("CLUSTERRA_OIDC_SCOPES", "openid email profile groups")
OIDC_GROUPS_CLAIM = env_str("CLUSTERRA_OIDC_GROUPS_CLAIM", "groups")
OIDC_POSIX_NAME_CLAIM = env_str("CLUSTERRA_OIDC_POSIX_NAME_CLAIM", "")
OIDC_EMAIL_DOMAINS = [d.lower() for d in env_list("CLUSTERRA_OIDC_EMAIL_DOMAINS", [])]
OIDC_TIMEOUT = env_int("CLUSTERRA_OIDC_TIMEOUT", 5, minimum=1, maximum=60)  # seconds for each call to the IdP
OIDC_VERIFY_TLS = env_bool("CLUSTERRA_OIDC_VERIFY_TLS", True)
OIDC_CLAIMS_MAX_AGE = env_int("CLUSTERRA_OIDC_MAX_TOKEN_AGE", 600, minimum=0)  # an ID token older than this (iat) is refused
OIDC_MAX_STATES = 50  # sign-ins a browser may have started and not finished (mozilla-django-oidc)
OIDC_AUTHENTICATION_CALLBACK_URL = "oidc_authentication_callback"
LOGIN_REDIRECT_URL_FAILURE = "/accounts/login/"
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "accounts:login"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

# --- HTTPS behind a proxy (docs/deployment.md, "Security settings") ---------------------------------
# Only behind a proxy that sets X-Forwarded-Proto itself, overwriting whatever the client sent (deploy/nginx):
# requests that came in over https then count as secure for redirects, HSTS, cookies and CSRF.
BEHIND_TLS_PROXY = env_bool("CLUSTERRA_BEHIND_TLS_PROXY", False)
if BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# http → https; the health and metrics probes are exempt (SECURE_REDIRECT_EXEMPT, below).
SECURE_SSL_REDIRECT = env_bool("CLUSTERRA_SSL_REDIRECT", BEHIND_TLS_PROXY)
SECURE_HSTS_SECONDS = env_int("CLUSTERRA_HSTS_SECONDS", 0, minimum=0, maximum=2 * 365 * 86400)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("CLUSTERRA_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("CLUSTERRA_HSTS_PRELOAD", False)
if SECURE_HSTS_PRELOAD and (SECURE_HSTS_SECONDS < 365 * 86400 or not SECURE_HSTS_INCLUDE_SUBDOMAINS):
    raise ImproperlyConfigured(
        "CLUSTERRA_HSTS_PRELOAD needs CLUSTERRA_HSTS_SECONDS of at least 31536000 and CLUSTERRA_HSTS_INCLUDE_SUBDOMAINS=true"
    )
# `check --deploy` reminds about both HSTS flags whenever HSTS is on (W005, W021). Setting a flag explicitly
# to false records the decision not to use it, and silences that reminder; leaving it unset keeps it.
SILENCED_SYSTEM_CHECKS = [
    check_id for name, check_id in (("CLUSTERRA_HSTS_INCLUDE_SUBDOMAINS", "security.W005"), ("CLUSTERRA_HSTS_PRELOAD", "security.W021"))
    if env_str(name) is not None and not env_bool(name, False)
]
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = env_bool("CLUSTERRA_SECURE_COOKIES", BEHIND_TLS_PROXY)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_AGE = env_int("CLUSTERRA_SESSION_AGE", 12 * 3600, minimum=300)
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True


def _csp_origins(name: str) -> list[str]:
    """scheme://host[:port] origins from a comma-separated variable."""
    origins = env_list(name, [])
    for origin in origins:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") or parts.query:
            raise ImproperlyConfigured(f"{name} entries must be origins like https://idp.example.org, got {origin!r}")
    return [origin.rstrip("/") for origin in origins]


def _websocket_sources(tls: bool) -> list[str]:
    """ws(s):// sources for the terminal's WebSocket on every host the portal answers to. CSP3 browsers match
    same-origin WebSockets with 'self' already; older ones (Chrome < 71, Safari < 16) need these."""
    sources = []
    for host in ALLOWED_HOSTS:
        if host == "*":
            continue
        names = [host[1:], f"*{host}"] if host.startswith(".") else [host]
        sources += [f"{scheme}://{name}" for name in names for scheme in (("wss",) if tls else ("wss", "ws"))]
    for origin in TRUSTED_ORIGINS:
        parts = urlsplit(origin)
        sources.append(f"{'wss' if parts.scheme == 'https' else 'ws'}://{parts.netloc}")
    return list(dict.fromkeys(sources))


# --- Content-Security-Policy (django-csp 4) ---------------------------------------------------------
# Scripts only from our own static files (an inline script needs the request's nonce: the terminal's
# import map); inline styles because xterm.js's DOM renderer and htmx insert <style> elements.
_csp_report_uri = env_str("CLUSTERRA_CSP_REPORT_URI")
if _csp_report_uri is not None and urlsplit(_csp_report_uri).scheme not in ("http", "https"):
    raise ImproperlyConfigured(f"CLUSTERRA_CSP_REPORT_URI must be an http(s) URL, got {_csp_report_uri!r}")
_csp_policy = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF, UNSAFE_INLINE],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF, *_websocket_sources(tls=BEHIND_TLS_PROXY or SECURE_SSL_REDIRECT)],
        "object-src": [NONE],
        "base-uri": [SELF],
        "frame-ancestors": [NONE],
        # The IdP's origin for OIDC sign-in (a form posts or redirects there).
        "form-action": [SELF, *_csp_origins("CLUSTERRA_CSP_FORM_ACTION_ORIGINS")],
        **({"report-uri": [_csp_report_uri]} if _csp_report_uri else {}),
    },
}
# Report-only: browsers report what the policy would block (console, CLUSTERRA_CSP_REPORT_URI) and block nothing.
_csp_report_only = env_bool("CLUSTERRA_CSP_REPORT_ONLY", False)  # (django-csp < 4 took CSP_REPORT_ONLY as a setting)
CONTENT_SECURITY_POLICY = None if _csp_report_only else _csp_policy
CONTENT_SECURITY_POLICY_REPORT_ONLY = _csp_policy if _csp_report_only else None

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

STATIC_URL = "static/"
STATIC_ROOT = env_path("CLUSTERRA_STATIC_ROOT", DATA_DIR / "static")
_XTERM = BASE_DIR / "node_modules" / "@xterm"
STATICFILES_DIRS = [
    BASE_DIR / "static",
    # Front-end packages pinned by package.json / package-lock.json (`npm ci`), served as our own files.
    ("vendor/xterm", _XTERM / "xterm" / "lib"),
    ("vendor/xterm", _XTERM / "xterm" / "css"),
    ("vendor/addon-fit", _XTERM / "addon-fit" / "lib"),
    ("vendor/addon-web-links", _XTERM / "addon-web-links" / "lib"),
    ("vendor/addon-search", _XTERM / "addon-search" / "lib"),
    ("vendor/addon-webgl", _XTERM / "addon-webgl" / "lib"),
    ("vendor/htmx", BASE_DIR / "node_modules" / "htmx.org" / "dist"),
    ("vendor/asciinema-player", BASE_DIR / "node_modules" / "asciinema-player" / "dist" / "bundle"),  # session playback
]
# Serve straight from the finders, so the embedded default needs no collectstatic step
# (`manage.py collectstatic` into STATIC_ROOT still works for a proxy that serves files itself).
WHITENOISE_USE_FINDERS = True
if STATIC_ROOT.is_relative_to(DATA_DIR):
    private_dir(DATA_DIR)
STATIC_ROOT.mkdir(parents=True, exist_ok=True)

_redis_url = env_str("CLUSTERRA_REDIS_URL")
if _redis_url:
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [{
            "address": _redis_url,
            # channels_redis waits for messages with BZPOPMIN 5 s; redis-py 8 gives every read a 5 s
            # socket_timeout by default, so a quiet channel's read timed out and killed its consumer
            # (redis/redis-py#4091). Reads may take longer than that wait; a dead server is still noticed.
            "socket_timeout": 15,
            "socket_connect_timeout": 5,
            "socket_keepalive": True,
            "health_check_interval": 30,
        }]}}
    }
else:
    # One process only: revocation reaches the sessions of this process. Production sets Redis.
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# This daphne process among several behind one proxy (deploy/: instance N of clusterra-daphne@.service).
# The terminal tells the browser, which reattaches through /ws/w/<worker>/... so the proxy can route the
# reattach to the process holding the shell (docs/deployment.md, "Reattach routing").
WORKER_ID = env_match("CLUSTERRA_WORKER_ID", "0", r"[a-z0-9]{1,16}", "1-16 lowercase letters or digits")

# --- Celery (the job poller) ---------------------------------------------------------------
CELERY_BROKER_URL = env_str("CLUSTERRA_CELERY_BROKER_URL", _redis_url or "redis://127.0.0.1:6379/0")
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Beat only ticks; each tick polls the clusters whose own interval (Cluster.poll_interval) is due.
CELERY_BEAT_SCHEDULE = {
    "poll-due-clusters": {"task": "jobs.tasks.poll_due_clusters", "schedule": env_int("CLUSTERRA_POLL_TICK", 2, minimum=1)},
}
# Redis for the poller's per-cluster due/lock keys (the same server as the broker by default).
POLL_LOCK_REDIS_URL = env_str("CLUSTERRA_POLL_LOCK_REDIS_URL", CELERY_BROKER_URL)
# Quotas on the dashboard (clusters/quotas.py, docs/dashboard.md): Slurm limits, fair-share and storage use of
# every active account on a polled cluster, collected as that account's own POSIX user every N seconds.
QUOTA_INTERVAL = env_int("CLUSTERRA_QUOTA_INTERVAL", 300, minimum=30)
QUOTA_COMMAND_TIMEOUT = env_int("CLUSTERRA_QUOTA_COMMAND_TIMEOUT", 30, minimum=1, maximum=600)
CELERY_BEAT_SCHEDULE["collect-quotas"] = {"task": "clusters.tasks.collect_quotas_due", "schedule": QUOTA_INTERVAL}

# --- Cache: the sign-in throttle's counters, shared by every process (accounts/throttle.py, docs/security.md) ---
def _redis_database(url: str, db: int) -> str:
    """The same Redis server as `url`, database `db`."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = [item for item in parts.query.split("&") if item and not item.startswith("db=")]
        return f"unix://{parts.netloc}{parts.path}?{'&'.join([*query, f'db={db}'])}"
    return parts._replace(path=f"/{db}").geturl()


CACHE_URL = env_str("CLUSTERRA_CACHE_URL") or _redis_database(_redis_url or CELERY_BROKER_URL, 2)
if urlsplit(CACHE_URL).scheme not in ("redis", "rediss", "unix"):
    raise ImproperlyConfigured(f"CLUSTERRA_CACHE_URL must be a redis://, rediss:// or unix:// URL, got {CACHE_URL!r}")
# Connect and read timeouts, and no retries: with Redis away a sign-in waits at most this long once,
# then the throttle is off for a few seconds (it fails open).
_cache_timeout = env_int("CLUSTERRA_CACHE_TIMEOUT_MS", 500, minimum=50, maximum=10_000) / 1000
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": CACHE_URL,
        "KEY_PREFIX": env_str("CLUSTERRA_CACHE_KEY_PREFIX", ""),
        "OPTIONS": {"socket_connect_timeout": _cache_timeout, "socket_timeout": _cache_timeout,
                    "retry": Retry(NoBackoff(), 0), "health_check_interval": 30},
    }
}
# Failed sign-ins (passwords, API tokens, SCIM tokens): this many failures for one email or token prefix,
# or from one address, within the window lock it for the cool-off; the right password is then refused too.
SIGNIN_ACCOUNT_LIMIT = env_int("CLUSTERRA_SIGNIN_ACCOUNT_LIMIT", 5, minimum=1, maximum=1000)
SIGNIN_ADDRESS_LIMIT = env_int("CLUSTERRA_SIGNIN_ADDRESS_LIMIT", 20, minimum=1, maximum=100_000)
SIGNIN_WINDOW = env_int("CLUSTERRA_SIGNIN_WINDOW", 900, minimum=1, maximum=86400)
SIGNIN_COOLOFF = env_int("CLUSTERRA_SIGNIN_COOLOFF", 900, minimum=1, maximum=86400)

# --- Terminal ---------------------------------------------------------------------------------
RECORDINGS_DIR = env_path("CLUSTERRA_RECORDINGS_DIR", DATA_DIR / "recordings")
try:
    private_dir(RECORDINGS_DIR)
except OSError:
    pass  # `manage.py check` names the problem (terminal.E002)
# --- Recording storage and SSM session logs (terminal/recordings.py, docs/audit.md) ---
# The recorder writes into this spool (local persistent disk, 0700); at session end each file is handed to the
# store and kept here until it is there (a store outage loses nothing; Celery retries with backoff).
RECORDINGS_SPOOL_DIR = env_path("CLUSTERRA_RECORDINGS_SPOOL_DIR", DATA_DIR / "spool")
try:
    private_dir(RECORDINGS_SPOOL_DIR)
except OSError:
    pass  # `manage.py check` names the problem (terminal.E006)
RECORDINGS_STORE = env_match("CLUSTERRA_RECORDINGS_STORE", "filesystem", r"filesystem|s3", "filesystem or s3")
RECORDINGS_S3_BUCKET = env_str("CLUSTERRA_RECORDINGS_S3_BUCKET", "")
RECORDINGS_S3_PREFIX = env_match("CLUSTERRA_RECORDINGS_S3_PREFIX", "recordings/", r"([\w!\-.*'()=+@]+/)*",
                                 "empty or an S3 key prefix ending in / (letters, digits and !-_.*'()=+@)")
RECORDINGS_S3_REGION = env_str("CLUSTERRA_RECORDINGS_S3_REGION", "")  # empty: the default chain's (AWS_REGION)
RECORDINGS_S3_ENDPOINT_URL = env_str("CLUSTERRA_RECORDINGS_S3_ENDPOINT_URL", "")  # S3-compatible stores, VPC endpoints
RECORDINGS_S3_SSE = env_match("CLUSTERRA_RECORDINGS_S3_SSE", "AES256", r"AES256|aws:kms|none", "AES256, aws:kms or none")
RECORDINGS_S3_KMS_KEY_ID = env_str("CLUSTERRA_RECORDINGS_S3_KMS_KEY_ID", "")
if RECORDINGS_STORE == "s3" and not RECORDINGS_S3_BUCKET:
    raise ImproperlyConfigured("CLUSTERRA_RECORDINGS_STORE=s3 needs CLUSTERRA_RECORDINGS_S3_BUCKET")
if {".", ".."} & set(RECORDINGS_S3_PREFIX.split("/")):
    raise ImproperlyConfigured(f"CLUSTERRA_RECORDINGS_S3_PREFIX must not have . or .. parts, got {RECORDINGS_S3_PREFIX!r}")
if RECORDINGS_S3_KMS_KEY_ID and RECORDINGS_S3_SSE != "aws:kms":
    raise ImproperlyConfigured("CLUSTERRA_RECORDINGS_S3_KMS_KEY_ID needs CLUSTERRA_RECORDINGS_S3_SSE=aws:kms")
if RECORDINGS_S3_ENDPOINT_URL and urlsplit(RECORDINGS_S3_ENDPOINT_URL).scheme not in ("http", "https"):
    raise ImproperlyConfigured(f"CLUSTERRA_RECORDINGS_S3_ENDPOINT_URL must be an http(s) URL, got {RECORDINGS_S3_ENDPOINT_URL!r}")
# A log larger than this is not fetched from a cluster's bucket, and only this much of a recording is indexed.
RECORDINGS_MAX_BYTES = env_int("CLUSTERRA_RECORDINGS_MAX_BYTES", 1024**3, minimum=1024**2)
# An SSM session's S3 log not there this long after the session ended is flagged late, then missing.
SSM_LOG_LATE_SECONDS = env_int("CLUSTERRA_SSM_LOG_LATE_SECONDS", 900, minimum=60)
SSM_LOG_MISSING_SECONDS = env_int("CLUSTERRA_SSM_LOG_MISSING_SECONDS", 86400, minimum=SSM_LOG_LATE_SECONDS + 60)
CELERY_BEAT_SCHEDULE["sweep-session-logs"] = {
    "task": "terminal.tasks.sweep_session_logs",
    "schedule": env_int("CLUSTERRA_RECORDINGS_SWEEP_SECONDS", 30, minimum=5, maximum=600),
}
CELERY_BEAT_SCHEDULE["expire-recordings"] = {"task": "terminal.tasks.expire_recordings", "schedule": 3600}
TERMINAL_MIN_UID = env_int("CLUSTERRA_TERMINAL_MIN_UID", 1000, minimum=1)
TERMINAL_HIGH_WATERMARK = env_int("CLUSTERRA_TERMINAL_HIGH_WATERMARK", 512 * 1024, minimum=64 * 1024)
TERMINAL_LOW_WATERMARK = env_int("CLUSTERRA_TERMINAL_LOW_WATERMARK", 128 * 1024, minimum=1)
if TERMINAL_LOW_WATERMARK >= TERMINAL_HIGH_WATERMARK:
    raise ImproperlyConfigured("CLUSTERRA_TERMINAL_LOW_WATERMARK must be below CLUSTERRA_TERMINAL_HIGH_WATERMARK")
TERMINAL_COALESCE_MS = env_int("CLUSTERRA_TERMINAL_COALESCE_MS", 3, minimum=0, maximum=100)
TERMINAL_COALESCE_BYTES = env_int("CLUSTERRA_TERMINAL_COALESCE_BYTES", 256 * 1024, minimum=4096)
TERMINAL_MAX_FRAME = env_int("CLUSTERRA_TERMINAL_MAX_FRAME", 64 * 1024, minimum=1024)
# Warn this many seconds before the idle timeout or the maximum duration ends a session.
TERMINAL_WARNING_SECONDS = env_int("CLUSTERRA_TERMINAL_WARNING_SECONDS", 60, minimum=0)
# A dropped browser connection may reattach to its live session within this many seconds (0: end at once).
TERMINAL_REATTACH_GRACE = env_int("CLUSTERRA_TERMINAL_REATTACH_GRACE", 60, minimum=0, maximum=3600)
# Each portal process renews a lease on its sessions every 2 s; one whose lease ran out this long ago
# is taken for dead (SIGKILL, OOM): its sessions are ended as worker_lost and its shells killed
# (terminal/processes.py). Long enough that a busy process is not mistaken for a dead one.
TERMINAL_WORKER_LEASE_SECONDS = env_int("CLUSTERRA_TERMINAL_WORKER_LEASE_SECONDS", 15, minimum=5, maximum=600)
# Onboarding/offboarding work on head nodes that failed and is due again (accounts/lifecycle.py).
CELERY_BEAT_SCHEDULE["retry-head-node-work"] = {"task": "accounts.tasks.retry_head_node_work", "schedule": 10}
CELERY_BEAT_SCHEDULE["reap-lost-portal-processes"] = {"task": "terminal.tasks.reap_lost_portal_processes", "schedule": 5}
CELERY_BEAT_SCHEDULE["seal-audit-events"] = {"task": "audit.tasks.seal_pending_events", "schedule": 10}
# Recent output kept per session and replayed on reattach (at most the high watermark).
TERMINAL_SCROLLBACK_BYTES = env_int("CLUSTERRA_TERMINAL_SCROLLBACK_BYTES", 256 * 1024, minimum=0, maximum=16 * 1024 * 1024)
# PATH given to the user's login shell (their profile may extend it).
TERMINAL_PATH = env_str("CLUSTERRA_TERMINAL_PATH", "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin")
TERMINAL_LANG = env_str("CLUSTERRA_TERMINAL_LANG", "C.UTF-8")

# --- File browser (filebrowser/, docs/files.md) ------------------------------------------------
# Uploads larger than this are refused before anything is written (SSM clusters have a smaller, fixed limit).
FILES_MAX_UPLOAD_BYTES = env_int("CLUSTERRA_FILES_MAX_UPLOAD_BYTES", 512 * 1024**2, minimum=1024)
# Files larger than this open read-only (no editing); a text preview shows at most this much of a file.
FILES_MAX_EDIT_BYTES = env_int("CLUSTERRA_FILES_MAX_EDIT_BYTES", 1024**2, minimum=1024, maximum=16 * 1024**2)
FILES_MAX_PREVIEW_BYTES = env_int("CLUSTERRA_FILES_MAX_PREVIEW_BYTES", 256 * 1024, minimum=1024, maximum=16 * 1024**2)
# A download or upload taking longer than this (seconds) is stopped and its process killed.
FILES_TRANSFER_TIMEOUT = env_int("CLUSTERRA_FILES_TRANSFER_TIMEOUT", 3600, minimum=10, maximum=86400)

# --- Logs, health and metrics (clusterra/logcontext.py, clusterra/ops.py, clusterra/metrics.py) -------------
from clusterra.env import env_choice  # noqa: E402

# json: one JSON object per line with request_id/tenant/user_id/session_id (production); plain: the demo's lines.
LOG_FORMAT = env_choice("CLUSTERRA_LOG_FORMAT", "plain", ("plain", "json"))
# Take X-Request-ID from the proxy (only when it overwrites the header, as nginx's `$request_id` does).
TRUST_REQUEST_ID = env_bool("CLUSTERRA_TRUST_REQUEST_ID", False)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "context": {"()": "clusterra.logcontext.ContextFilter"},
        "redact": {"()": "clusterra.logcontext.RedactFilter"},
    },
    "formatters": {
        "plain": {"()": "clusterra.logcontext.PlainFormatter", "format": "%(asctime)s %(levelname)s %(name)s: %(message)s%(context)s"},
        "json": {"()": "clusterra.logcontext.JsonFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["context", "redact"]},
    },
    "root": {"handlers": ["console"], "level": env_str("CLUSTERRA_LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}},
}

# /metrics: a bearer token, or a direct (not proxied) client in these networks ("none": token only).
METRICS_TOKEN = env_secret("CLUSTERRA_METRICS_TOKEN")
if METRICS_TOKEN is not None and len(METRICS_TOKEN) < 16:
    raise ImproperlyConfigured("CLUSTERRA_METRICS_TOKEN must be at least 16 characters long")
_metrics_networks = env_list("CLUSTERRA_METRICS_ALLOWED_NETWORKS", ["127.0.0.1/32", "::1/128"])
try:
    METRICS_ALLOWED_NETWORKS = [] if _metrics_networks == ["none"] else [
        ipaddress.ip_network(item, strict=False) for item in _metrics_networks]
except ValueError as exc:
    raise ImproperlyConfigured(f"CLUSTERRA_METRICS_ALLOWED_NETWORKS: {exc}") from None
# The probes answer before SecurityMiddleware; listed anyway for a reordered MIDDLEWARE.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]

# --- AWS ---------------------------------------------------------------------------------------
# The portal is the OIDC issuer AWS trusts for SSM clusters (docs/aws.md): tokens it signs are
# exchanged with STS AssumeRoleWithWebIdentity for per-user credentials.
# The embedded default is the local portal (`make demo` serves CLUSTERRA_PORT); AWS itself needs the public https URL.
AWS_ISSUER_URL = (
    env_str("CLUSTERRA_ISSUER_URL") or f"http://127.0.0.1:{env_int('CLUSTERRA_PORT', 8000, minimum=1, maximum=65535)}"
).rstrip("/")
_issuer = urlsplit(AWS_ISSUER_URL)
if _issuer.scheme not in ("http", "https") or not _issuer.hostname or _issuer.query or _issuer.fragment or _issuer.username:
    raise ImproperlyConfigured(
        f"CLUSTERRA_ISSUER_URL must be an http(s) URL with a host and no query, fragment or user, got {AWS_ISSUER_URL!r}"
    )
# Lifetime of a token the portal signs for STS (it is used at once; short is safer).
AWS_TOKEN_LIFETIME = env_int("CLUSTERRA_AWS_TOKEN_LIFETIME", 300, minimum=60, maximum=3600)
# A new signing key every N days (Celery beat checks every 6 h; `manage.py rotate_signing_key` forces one).
SIGNING_KEY_ROTATION_DAYS = env_int("CLUSTERRA_SIGNING_KEY_ROTATION_DAYS", 30, minimum=1, maximum=365)
# DurationSeconds asked of STS (the role's MaxSessionDuration must allow it; 3600 is IAM's default).
AWS_SESSION_DURATION = env_int("CLUSTERRA_AWS_SESSION_DURATION", 3600, minimum=900, maximum=43200)
# Cached STS credentials are replaced this many seconds before they expire.
AWS_CREDENTIAL_REFRESH_MARGIN = env_int("CLUSTERRA_AWS_CREDENTIAL_REFRESH_MARGIN", 300, minimum=0, maximum=1800)
if AWS_CREDENTIAL_REFRESH_MARGIN >= AWS_SESSION_DURATION - 60:
    raise ImproperlyConfigured("CLUSTERRA_AWS_CREDENTIAL_REFRESH_MARGIN must be well below CLUSTERRA_AWS_SESSION_DURATION")
# Every AWS call: connect/read timeouts (seconds) and total attempts (standard retry mode).
AWS_CONNECT_TIMEOUT = env_int("CLUSTERRA_AWS_CONNECT_TIMEOUT", 5, minimum=1, maximum=60)
AWS_READ_TIMEOUT = env_int("CLUSTERRA_AWS_READ_TIMEOUT", 20, minimum=1, maximum=300)
AWS_MAX_ATTEMPTS = env_int("CLUSTERRA_AWS_MAX_ATTEMPTS", 3, minimum=1, maximum=10)
CELERY_BEAT_SCHEDULE["rotate-signing-key"] = {"task": "accounts.tasks.rotate_signing_key_if_due", "schedule": 6 * 3600}
# botocore logs request and response bodies at DEBUG, and those carry web-identity and session tokens.
for _name in ("botocore", "boto3", "urllib3", "s3transfer"):
    LOGGING["loggers"].setdefault(_name, {"level": "WARNING"})

# --- Okta: reconciliation with the Groups API and event hooks (okta/, docs/okta.md) ---------------------------
OKTA_SYNC_MINUTES = env_int("CLUSTERRA_OKTA_SYNC_MINUTES", 15, minimum=1, maximum=1440)
CELERY_BEAT_SCHEDULE["okta-reconcile"] = {"task": "okta.tasks.reconcile_all", "schedule": OKTA_SYNC_MINUTES * 60}
OKTA_CONNECT_TIMEOUT = env_int("CLUSTERRA_OKTA_CONNECT_TIMEOUT", 5, minimum=1, maximum=60)
OKTA_READ_TIMEOUT = env_int("CLUSTERRA_OKTA_READ_TIMEOUT", 30, minimum=1, maximum=300)
OKTA_RETRIES = env_int("CLUSTERRA_OKTA_RETRIES", 2, minimum=0, maximum=10)  # per request, on 5xx or no answer
OKTA_PAGE_SIZE = env_int("CLUSTERRA_OKTA_PAGE_SIZE", 1000, minimum=1, maximum=1000)  # members per page (`limit`)
OKTA_RATE_LIMIT_MAX_WAIT = env_int("CLUSTERRA_OKTA_RATE_LIMIT_MAX_WAIT", 60, minimum=1, maximum=3600)  # one wait, seconds
OKTA_RATE_LIMIT_BUDGET = env_int("CLUSTERRA_OKTA_RATE_LIMIT_BUDGET", 300, minimum=1, maximum=7200)  # all waits of a run
OKTA_RUN_STALE = env_int("CLUSTERRA_OKTA_RUN_STALE", 3600, minimum=60, maximum=86400)  # a "running" run older is abandoned
OKTA_HOOK_THREADS = env_int("CLUSTERRA_OKTA_HOOK_THREADS", 4, minimum=0, maximum=64)  # 0: in the request's own thread
OKTA_HOOK_ANSWER_WITHIN = env_int("CLUSTERRA_OKTA_HOOK_ANSWER_WITHIN_MS", 2500, minimum=0, maximum=60_000) / 1000
OKTA_HOOK_MAX_BODY = env_int("CLUSTERRA_OKTA_HOOK_MAX_BODY", 1024 * 1024, minimum=1024, maximum=16 * 1024 * 1024)
