import pytest
from django.core.exceptions import ImproperlyConfigured

from clusterra import env


def test_env_bool_is_strict(monkeypatch):
    monkeypatch.setenv("X_FLAG", "yes")
    assert env.env_bool("X_FLAG", False) is True
    monkeypatch.setenv("X_FLAG", "off")
    assert env.env_bool("X_FLAG", True) is False
    monkeypatch.setenv("X_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="X_FLAG must be one of"):
        env.env_bool("X_FLAG", False)


def test_env_int_checks_type_and_range(monkeypatch):
    assert env.env_int("X_NUM", 7) == 7
    monkeypatch.setenv("X_NUM", "12")
    assert env.env_int("X_NUM", 7, minimum=1, maximum=20) == 12
    monkeypatch.setenv("X_NUM", "twelve")
    with pytest.raises(ImproperlyConfigured, match="X_NUM must be an integer"):
        env.env_int("X_NUM", 7)
    monkeypatch.setenv("X_NUM", "0")
    with pytest.raises(ImproperlyConfigured, match="at least 1"):
        env.env_int("X_NUM", 7, minimum=1)


def test_env_secret_from_file(monkeypatch, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret-value\n")
    monkeypatch.setenv("X_SECRET_FILE", str(secret))
    assert env.env_secret("X_SECRET") == "s3cret-value"
    monkeypatch.setenv("X_SECRET", "direct")
    with pytest.raises(ImproperlyConfigured, match="not both"):
        env.env_secret("X_SECRET")
    monkeypatch.delenv("X_SECRET")
    monkeypatch.setenv("X_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ImproperlyConfigured, match="cannot be read"):
        env.env_secret("X_SECRET")


def test_env_list_and_choice(monkeypatch):
    monkeypatch.setenv("X_LIST", " a, b,,c ")
    assert env.env_list("X_LIST", []) == ["a", "b", "c"]
    monkeypatch.setenv("X_CHOICE", "blue")
    with pytest.raises(ImproperlyConfigured, match="one of red, green"):
        env.env_choice("X_CHOICE", "red", ("red", "green"))


def test_env_match_takes_whole_values_only(monkeypatch):
    assert env.env_match("X_ID", "0", r"[a-z0-9]{1,16}", "an id") == "0"
    monkeypatch.setenv("X_ID", "a7")
    assert env.env_match("X_ID", "0", r"[a-z0-9]{1,16}", "an id") == "a7"
    for bad in ("a7\n", "../1", "x" * 17):
        monkeypatch.setenv("X_ID", bad)
        with pytest.raises(ImproperlyConfigured, match="X_ID must be an id"):
            env.env_match("X_ID", "0", r"[a-z0-9]{1,16}", "an id")


def test_bad_settings_stop_start_up(tmp_path):
    """The real settings module refuses bad values with the variable's name."""
    import os
    import subprocess
    import sys

    base_env = {**os.environ, "CLUSTERRA_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "clusterra.settings"}
    for name, value, expected in [
        ("CLUSTERRA_DEBUG", "perhaps", "CLUSTERRA_DEBUG must be one of"),
        ("CLUSTERRA_TERMINAL_LOW_WATERMARK", "99999999", "must be below"),
        ("CLUSTERRA_SECRET_KEY", "short", "at least 32 characters"),
        ("CLUSTERRA_TRUSTED_ORIGINS", "portal.example.org", "need a scheme"),
        ("CLUSTERRA_WORKER_ID", "Daphne-1", "CLUSTERRA_WORKER_ID must be 1-16 lowercase letters or digits"),
        ("CLUSTERRA_LOG_FORMAT", "xml", "CLUSTERRA_LOG_FORMAT must be one of plain, json"),
        ("CLUSTERRA_METRICS_TOKEN", "short", "CLUSTERRA_METRICS_TOKEN must be at least 16 characters"),
        ("CLUSTERRA_METRICS_ALLOWED_NETWORKS", "10.0.0.0/8,intranet", "CLUSTERRA_METRICS_ALLOWED_NETWORKS:"),
    ]:
        result = subprocess.run(
            [sys.executable, "-c", "import django; django.setup()"], env={**base_env, name: value},
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode != 0 and expected in result.stderr, (name, result.stderr[-500:])
