"""Settings that protect a deployment: private data files, and the documented production configuration
passing `manage.py check --deploy` (each in a subprocess with its own environment, as at start-up)."""

import os
import stat
import subprocess
import sys

import pytest

from tests.conftest import BASE_DIR


def _clean_env(**overrides: str) -> dict[str, str]:
    """The environment of a fresh start: none of the test run's CLUSTERRA_* variables."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLUSTERRA_")}
    return {**env, "DJANGO_SETTINGS_MODULE": "clusterra.settings", **overrides}


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# Runs in the child: migrate (Django creates the SQLite file, if nothing did before), then, with a
# connection still open in WAL mode, report the modes of everything under the data directory.
_REPORT_MODES = """
import json, os, stat, sys
import django
django.setup()
from django.conf import settings
from django.core.management import call_command
from django.db import connection
call_command("migrate", verbosity=0)
with connection.cursor() as cursor:
    cursor.execute("PRAGMA journal_mode")
    journal = cursor.fetchone()[0]
    cursor.execute("UPDATE django_migrations SET applied = applied WHERE id = 1")
    modes = {}
    for root, dirs, files in os.walk(settings.DATA_DIR):
        for name in dirs + files:
            path = os.path.join(root, name)
            modes[os.path.relpath(path, settings.DATA_DIR)] = oct(stat.S_IMODE(os.stat(path).st_mode))
json.dump({"journal": journal, "modes": modes}, sys.stdout)
"""


@pytest.mark.slow  # migrate in a subprocess
def test_the_embedded_default_keeps_its_data_private(tmp_path):
    """Under the usual umask 022: data directory (and the parents it creates) 0700, database, its WAL
    files and the generated secret key 0600, recordings and their spool 0700."""
    import json

    data = tmp_path / "missing-parent" / "data"
    result = subprocess.run([sys.executable, "-c", _REPORT_MODES], cwd=BASE_DIR, env=_clean_env(CLUSTERRA_DATA_DIR=str(data)),
                            capture_output=True, text=True, timeout=300, umask=0o022)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    modes = report["modes"]
    assert report["journal"] == "wal"
    assert _mode(data.parent) == 0o700 and _mode(data) == 0o700
    assert modes["clusterra.sqlite3"] == "0o600"
    assert modes["clusterra.sqlite3-wal"] == "0o600" and modes["clusterra.sqlite3-shm"] == "0o600"
    assert modes["secret_key"] == "0o600"
    assert modes["recordings"] == "0o700" and modes["spool"] == "0o700"
    assert len((data / "secret_key").read_text().strip()) >= 50

    # A second start keeps the key, and a database URL elsewhere gets the same treatment.
    elsewhere = tmp_path / "db" / "portal.sqlite3"
    again = subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); from django.conf import settings; print(settings.SECRET_KEY)"],
        cwd=BASE_DIR, env=_clean_env(CLUSTERRA_DATA_DIR=str(data), CLUSTERRA_DATABASE_URL=f"sqlite:///{elsewhere}"),
        capture_output=True, text=True, timeout=120, umask=0o022,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.strip() == (data / "secret_key").read_text().strip()
    assert _mode(elsewhere.parent) == 0o700 and _mode(elsewhere) == 0o600


ENV_TEMPLATE = BASE_DIR / "deploy" / "clusterra.env.example"


def _production_env(tmp_path) -> dict[str, str]:
    """deploy/clusterra.env.example as an operator installs it: every value as documented, file paths moved
    under tmp_path, and the secret key file generated the way the template's comment says."""
    values = {}
    for line in ENV_TEMPLATE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = str(tmp_path / value.lstrip("/")) if value.startswith("/") else value
    assert values.get("CLUSTERRA_SECRET_KEY_FILE"), "the template names a secret key file"
    key_file = tmp_path / "etc" / "clusterra" / "secret_key"
    key_file.parent.mkdir(parents=True)
    key_file.write_text(subprocess.run([sys.executable, "-c", "import secrets; print(secrets.token_urlsafe(50))"],
                                       capture_output=True, text=True, check=True).stdout)
    values["CLUSTERRA_SECRET_KEY_FILE"] = str(key_file)
    return _clean_env(**values)


def _check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                          cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # five `check --deploy` runs
def test_the_documented_production_configuration_passes_check_deploy(tmp_path):
    env = _production_env(tmp_path)
    result = _check_deploy(env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout, result.stdout
    assert "WARNING" not in result.stdout + result.stderr and "security.W" not in result.stdout + result.stderr

    # Each of the settings matters: without it, check --deploy warns.
    for name, warning in [("CLUSTERRA_BEHIND_TLS_PROXY", "security.W008"), ("CLUSTERRA_HSTS_SECONDS", "security.W004"),
                          ("CLUSTERRA_HSTS_PRELOAD", "security.W021"), ("CLUSTERRA_HSTS_INCLUDE_SUBDOMAINS", "security.W005")]:
        without = {key: value for key, value in env.items() if key != name}
        if name == "CLUSTERRA_BEHIND_TLS_PROXY":
            del without["CLUSTERRA_SSL_REDIRECT"]
        result = _check_deploy(without)
        assert result.returncode != 0 and warning in result.stderr, (name, result.stderr[-1500:])


# Runs in the child with the production environment: the headers a browser gets through nginx (https) and
# what a plain-http request and a probe get.
_PROBE_HEADERS = """
import json, django
django.setup()
from django.core.management import call_command
from django.test import Client
call_command("migrate", verbosity=0)  # the sign-in page lists the tenants' identity providers
client = Client(HTTP_HOST="portal.example.org")
tls = client.get("/accounts/login/", HTTP_X_FORWARDED_PROTO="https")
plain = client.get("/accounts/login/", HTTP_X_FORWARDED_PROTO="http")
probe = client.get("/healthz")
csrf = tls.cookies.get("csrftoken")
print(json.dumps({
    "tls": [tls.status_code, dict(tls.headers)], "csrf_cookie_secure": bool(csrf and csrf["secure"]),
    "plain": [plain.status_code, plain.headers.get("Location")], "probe": probe.status_code,
}))
"""


def _probe_env(tmp_path) -> dict[str, str]:
    # The production environment with a database of its own (the probe migrates it): the sign-in page
    # lists the tenants' identity providers.
    return {**_production_env(tmp_path), "CLUSTERRA_DATABASE_URL": f"sqlite:///{tmp_path / 'probe.sqlite3'}"}


def test_the_production_configuration_sends_the_security_headers(tmp_path):
    import json

    result = subprocess.run([sys.executable, "-c", _PROBE_HEADERS], cwd=BASE_DIR, env=_probe_env(tmp_path),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    status, headers = report["tls"]
    assert status == 200
    assert headers["Strict-Transport-Security"] == "max-age=3600; includeSubDomains"
    assert headers["Referrer-Policy"] == "same-origin" and headers["X-Frame-Options"] == "DENY"
    policy = dict(part.strip().split(" ", 1) for part in headers["Content-Security-Policy"].split(";"))
    assert policy["default-src"] == "'self'" and policy["object-src"] == "'none'" and policy["frame-ancestors"] == "'none'"
    assert policy["script-src"] == "'self'"  # no inline script on this page, so no nonce
    assert policy["style-src"] == "'self' 'unsafe-inline'" and policy["img-src"] == "'self' data:"
    assert policy["connect-src"] == "'self' wss://portal.example.org"  # no ws:// behind TLS
    assert policy["form-action"] == "'self'" and policy["base-uri"] == "'self'"
    assert "Content-Security-Policy-Report-Only" not in headers
    assert report["csrf_cookie_secure"]
    assert report["plain"] == [301, "https://portal.example.org/accounts/login/"]
    assert report["probe"] == 200


def test_report_only_and_the_idp_origin(tmp_path):
    """The report-only switch moves the policy to the report-only header; the IdP's origin joins form-action."""
    import json

    env = {**_probe_env(tmp_path), "CLUSTERRA_CSP_REPORT_ONLY": "1",
           "CLUSTERRA_CSP_FORM_ACTION_ORIGINS": "https://idp.example.org/", "CLUSTERRA_CSP_REPORT_URI": "https://csp.example.org/r"}
    result = subprocess.run([sys.executable, "-c", _PROBE_HEADERS], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    headers = json.loads(result.stdout.strip().splitlines()[-1])["tls"][1]
    assert "Content-Security-Policy" not in headers
    policy = headers["Content-Security-Policy-Report-Only"]
    assert "form-action 'self' https://idp.example.org;" in policy + ";" and "report-uri https://csp.example.org/r" in policy


@pytest.mark.slow  # one start-up per bad value
def test_bad_security_settings_stop_start_up(tmp_path):
    base = _clean_env(CLUSTERRA_DATA_DIR=str(tmp_path))
    for name, value, expected in [
        ("CLUSTERRA_BEHIND_TLS_PROXY", "sometimes", "CLUSTERRA_BEHIND_TLS_PROXY must be one of"),
        ("CLUSTERRA_HSTS_SECONDS", "a year", "CLUSTERRA_HSTS_SECONDS must be an integer"),
        ("CLUSTERRA_HSTS_SECONDS", "-1", "CLUSTERRA_HSTS_SECONDS must be at least 0"),
        ("CLUSTERRA_HSTS_PRELOAD", "1", "CLUSTERRA_HSTS_PRELOAD needs CLUSTERRA_HSTS_SECONDS"),
        ("CLUSTERRA_CSP_FORM_ACTION_ORIGINS", "idp.example.org", "CLUSTERRA_CSP_FORM_ACTION_ORIGINS entries must be origins"),
        ("CLUSTERRA_CSP_FORM_ACTION_ORIGINS", "https://idp.example.org/login", "CLUSTERRA_CSP_FORM_ACTION_ORIGINS entries"),
        ("CLUSTERRA_CSP_REPORT_URI", "/csp-report", "CLUSTERRA_CSP_REPORT_URI must be an http(s) URL"),
        ("CLUSTERRA_CSP_REPORT_ONLY", "maybe", "CLUSTERRA_CSP_REPORT_ONLY must be one of"),
    ]:
        result = subprocess.run([sys.executable, "-c", "import django; django.setup()"], env={**base, name: value},
                                cwd=BASE_DIR, capture_output=True, text=True, timeout=60)
        assert result.returncode != 0 and expected in result.stderr, (name, value, result.stderr[-500:])


def test_templates_have_no_inline_script_without_the_nonce():
    """What the policy would refuse: inline scripts without the request's nonce, event-handler attributes,
    javascript: URLs. (tests/test_browser_csp.py sees the pages themselves; this covers every template.)"""
    import re

    found = []
    for template in sorted((BASE_DIR / "templates").rglob("*.html")):
        text = template.read_text()
        for tag in re.findall(r"<script\b[^>]*>", text):
            if "src=" not in tag and 'nonce="{{ request.csp_nonce }}"' not in tag:
                found.append((template.name, tag))
        found += [(template.name, attr) for attr in re.findall(r"""\son[a-z]+\s*=\s*["'][^"']*""", text)]
        found += [(template.name, url) for url in re.findall(r"javascript:[^\"']*", text)]
    assert not found, found
