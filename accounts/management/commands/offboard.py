"""`manage.py offboard <email> [--tenant slug] --reason TEXT`: the same offboarding as the admin's button."""

from django.core.management.base import BaseCommand, CommandError

from accounts.lifecycle import offboard_person
from accounts.models import Membership, Tenant, User


class Command(BaseCommand):
    help = ("Offboard a person from a tenant now: cluster accounts revoked, live terminals ended on every portal process, "
            "API tokens revoked, web sessions signed out, POSIX accounts locked on the head nodes. Prints what it did.")

    def add_arguments(self, parser):
        parser.add_argument("email")
        parser.add_argument("--tenant", help="The tenant's slug (needed when the person is in several).")
        parser.add_argument("--reason", required=True, help="Why; kept in the audit trail.")

    def handle(self, *args, email, tenant, reason, **options):
        if not reason.strip():
            raise CommandError("--reason must say why.")
        user = User.objects.filter(email__iexact=email.strip()).first()
        if user is None:
            raise CommandError(f"No user {email!r}.")
        memberships = Membership.objects.filter(user=user).select_related("tenant")
        if tenant:
            target = Tenant.objects.filter(slug=tenant).first()
            if target is None or not memberships.filter(tenant=target).exists():
                raise CommandError(f"{user.email} is not a member of a tenant {tenant!r}.")
        else:
            active = [m.tenant for m in memberships if m.status == Membership.Status.ACTIVE]
            if len(active) != 1:
                slugs = ", ".join(m.tenant.slug for m in memberships) or "none"
                raise CommandError(f"{user.email} is in these tenants: {slugs}. Name one with --tenant.")
            target = active[0]
        report = offboard_person(tenant=target, user=user, actor=None, reason=f"{reason.strip()} (manage.py offboard)")
        for line in report.lines():
            self.stdout.write(line)
        if report.clusters_pending:
            self.stdout.write(self.style.WARNING("Some head nodes did not answer; the portal retries the lock with backoff."))
