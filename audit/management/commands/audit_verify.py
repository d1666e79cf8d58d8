"""Verify the audit hash chains: python manage.py audit_verify [--tenant slug] [--system-only].

Exit status 0 when every chain checked is intact, 1 when one is broken (the first broken link is named).
"""

from django.core.management.base import BaseCommand, CommandError

from accounts.models import Tenant
from audit import chain


class Command(BaseCommand):
    help = "Check the audit events' hash chains and name the first broken link."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", metavar="SLUG", help="check only this tenant's chain")

    def handle(self, *args, tenant=None, **options):
        if tenant is not None:
            found = Tenant.objects.filter(slug=tenant).first()
            if found is None:
                raise CommandError(f"No tenant {tenant!r}.")
            keys, names = chain.chain_keys(found.pk), {chain.chain_key(found.pk): found.slug}
        else:
            keys = chain.chain_keys()
            names = {chain.chain_key(pk): slug for pk, slug in Tenant.objects.values_list("pk", "slug")}
        broken = 0
        for key in keys:
            report = chain.verify(key)
            name = names.get(key, key)
            pending = f", {report.unsealed} not sealed yet" if report.unsealed else ""
            if report.intact:
                self.stdout.write(f"{name}: intact, {report.events} events{pending}, head #{report.head_sequence} "
                                  f"{report.head_hash}")
            else:
                broken += 1
                where = f" (event id {report.event_id})" if report.event_id else ""
                self.stdout.write(self.style.ERROR(f"{name}: BROKEN at #{report.broken_at}{where}: {report.problem}"))
        if broken:
            raise CommandError(f"{broken} of {len(keys)} audit chain(s) broken.", returncode=1)
        self.stdout.write(self.style.SUCCESS(f"{len(keys)} audit chain(s) intact."))
