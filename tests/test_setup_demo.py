"""`make demo`'s data set-up is idempotent and never maps anyone to a system account."""

import os
import pwd

import pytest
from django.core.management import call_command

from accounts.models import Membership, User
from clusters.models import ClusterAccount

pytestmark = pytest.mark.django_db


def test_setup_demo_twice(monkeypatch, settings, tmp_path, capsys):
    settings.DATA_DIR = tmp_path
    monkeypatch.setenv("CLUSTERRA_DEMO_PASSWORD", "demo-password-123")
    call_command("setup_demo")
    call_command("setup_demo")  # running it again changes nothing and does not fail
    assert "CLUSTERRA_DEMO_PASSWORD" in capsys.readouterr().out
    alice = User.objects.get(email="alice@demo.test")
    bob = User.objects.get(email="bob@demo.test")
    assert alice.check_password("demo-password-123") and bob.check_password("demo-password-123")
    assert Membership.objects.get(user=alice).role == "admin" and Membership.objects.get(user=bob).role == "member"
    accounts = {a.user.email: a for a in ClusterAccount.objects.select_related("user")}
    assert set(accounts) == {"alice@demo.test", "bob@demo.test"}
    for email, account in accounts.items():
        expected = email.split("@")[0] if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        assert account.posix_username == expected and account.uid == pwd.getpwnam(expected).pw_uid >= 1000
        assert account.state == "active"


def test_setup_demo_generates_and_keeps_a_password(monkeypatch, settings, tmp_path, capsys):
    settings.DATA_DIR = tmp_path
    monkeypatch.delenv("CLUSTERRA_DEMO_PASSWORD", raising=False)
    call_command("setup_demo")
    password = (tmp_path / "demo_password").read_text().strip()
    assert len(password) >= 10 and password in capsys.readouterr().out
    assert (tmp_path / "demo_password").stat().st_mode & 0o077 == 0
    call_command("setup_demo")
    assert User.objects.get(email="bob@demo.test").check_password(password)
