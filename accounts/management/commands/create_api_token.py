from django.core.management.base import BaseCommand, CommandError

from accounts.models import Membership, Tenant, User
from accounts.services import create_api_token


class Command(BaseCommand):
    help = "Create a personal API token for a user and print it (once)."

    def add_arguments(self, parser):
        parser.add_argument("email")
        parser.add_argument("--tenant", help="tenant slug (needed when the user belongs to several)")
        parser.add_argument("--name", default="cli")
        parser.add_argument("--days", type=int, default=90)

    def handle(self, email, tenant=None, name="cli", days=90, **options):
        user = User.objects.filter(email=email.lower()).first()
        if user is None:
            raise CommandError(f"No user {email}.")
        memberships = Membership.objects.filter(user=user).select_related("tenant")
        if tenant:
            memberships = memberships.filter(tenant__slug=tenant)
        tenants = [m.tenant for m in memberships]
        if len(tenants) != 1:
            choices = ", ".join(t.slug for t in Tenant.objects.filter(memberships__user=user)) or "none"
            raise CommandError(f"Give --tenant: {email} belongs to {choices}.")
        try:
            _token, text = create_api_token(user=user, tenant=tenants[0], name=name, days=days)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(text)
