from django.core.management.base import BaseCommand, CommandError

from accounts.models import Tenant
from scim.models import ScimToken
from scim.tokens import create_scim_token, revoke_scim_token


class Command(BaseCommand):
    help = ("Create a SCIM bearer token for a tenant and print it (once), for the IdP's provisioning settings; "
            "or list or revoke the tenant's tokens.")

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="the tenant's slug")
        parser.add_argument("--name", default="SCIM", help="what will use it, e.g. Okta (audit events name SCIM writes by it)")
        parser.add_argument("--list", action="store_true", help="list the tenant's tokens instead")
        parser.add_argument("--revoke", metavar="PREFIX", help="revoke the token cst_PREFIX_… instead")

    def handle(self, tenant, name="SCIM", list=False, revoke=None, **options):  # noqa: A002 (the option's name)
        row = Tenant.objects.filter(slug=tenant).first()
        if row is None:
            raise CommandError(f"No tenant {tenant}.")
        if list:
            for token in ScimToken.objects.filter(tenant=row):
                state = f"revoked {token.revoked_at:%Y-%m-%d %H:%M}" if token.revoked_at else "active"
                used = f"{token.last_used_at:%Y-%m-%d %H:%M}" if token.last_used_at else "never"
                self.stdout.write(f"cst_{token.prefix}_…  {token.name}  created {token.created_at:%Y-%m-%d %H:%M}  "
                                  f"last used {used}  {state}")
            return
        if revoke:
            token = ScimToken.objects.filter(tenant=row, prefix=revoke.removeprefix("cst_").split("_")[0]).first()
            if token is None:
                raise CommandError(f"No SCIM token {revoke} in {tenant}.")
            if not revoke_scim_token(token, actor=None):
                raise CommandError(f"cst_{token.prefix}_… was already revoked.")
            self.stdout.write(f"Revoked cst_{token.prefix}_… ({token.name}).")
            return
        _token, text = create_scim_token(tenant=row, name=name, actor=None)
        self.stdout.write(text)
