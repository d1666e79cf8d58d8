"""Create the demo tenant, users and local cluster (idempotent; `make demo` runs it)."""

import os
import pwd
import secrets
import subprocess

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from accounts.models import AccessRule, Membership
from accounts.services import ensure_access_rule, ensure_tenant, ensure_user, set_membership
from clusters.services import configure_polling, ensure_cluster, map_account

DEMO_USERS = [
    ("alice@demo.test", "Alice Admin", "alice", Membership.Role.ADMIN),
    ("bob@demo.test", "Bob Member", "bob", Membership.Role.MEMBER),
]


def ensure_posix_user(name: str) -> pwd.struct_passwd:
    """Create a regular POSIX user with a private home directory (root only)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True, timeout=30)
    entry = pwd.getpwnam(name)
    os.chmod(entry.pw_dir, 0o700)
    return entry


class Command(BaseCommand):
    help = "Set up tenant 'demo' with alice (admin) and bob (member) and the local cluster 'local'."

    def handle(self, *args, **options):
        password = os.environ.get("CLUSTERRA_DEMO_PASSWORD")
        generated = False
        if not password:
            password_file = settings.DATA_DIR / "demo_password"
            if password_file.exists():
                password = password_file.read_text().strip()
            else:
                password = secrets.token_urlsafe(12)
                password_file.touch(mode=0o600)
                password_file.write_text(password)
                generated = True
        if len(password) < 10:
            raise CommandError("CLUSTERRA_DEMO_PASSWORD must be at least 10 characters long.")

        tenant = ensure_tenant(slug="demo", name="Demo")
        cluster = ensure_cluster(tenant=tenant, slug="local", name="Local cluster")
        as_root = os.geteuid() == 0
        if not as_root:
            me = pwd.getpwuid(os.geteuid())
            if me.pw_uid < settings.TERMINAL_MIN_UID:
                raise CommandError(f"Running as {me.pw_name} (uid {me.pw_uid}): run as root or as a regular user (uid >= {settings.TERMINAL_MIN_UID}).")
            self.stdout.write(self.style.WARNING(
                f"Not running as root: alice and bob both map to your own POSIX user {me.pw_name!r}."))
        for email, full_name, posix_name, role in DEMO_USERS:
            user = ensure_user(email=email, password=password, full_name=full_name)
            set_membership(tenant=tenant, user=user, role=role)
            entry = ensure_posix_user(posix_name) if as_root else pwd.getpwuid(os.geteuid())
            map_account(cluster=cluster, user=user, posix_username=entry.pw_name, uid=entry.pw_uid)

        # Single sign-on (when CLUSTERRA_OIDC_* is set): these IdP groups give these roles and clusters.
        ensure_access_rule(tenant=tenant, group="clusterra-admins", role=AccessRule.Role.ADMIN, clusters=[cluster])
        ensure_access_rule(tenant=tenant, group="clusterra-users", role=AccessRule.Role.MEMBER, clusters=[cluster])

        # The job poller runs squeue as an unprivileged service user (never root).
        poller = ensure_posix_user("clusterra-poll") if as_root else pwd.getpwuid(os.geteuid())
        configure_polling(cluster, posix_username=poller.pw_name, uid=poller.pw_uid)

        self.stdout.write("Demo logins (tenant 'demo', cluster 'local'):")
        for email, _name, posix_name, role in DEMO_USERS:
            self.stdout.write(f"  {email:<18} {role:<7} POSIX {posix_name if as_root else pwd.getpwuid(os.geteuid()).pw_name}")
        if generated:
            self.stdout.write(f"  password: {password}   (generated; kept in {settings.DATA_DIR / 'demo_password'})")
        elif not os.environ.get("CLUSTERRA_DEMO_PASSWORD"):
            self.stdout.write(f"  password: {password}   (from {settings.DATA_DIR / 'demo_password'})")
        else:
            self.stdout.write("  password: the value of CLUSTERRA_DEMO_PASSWORD")
