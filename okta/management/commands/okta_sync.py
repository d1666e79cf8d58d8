"""manage.py okta_sync TENANT [--dry-run | --apply]: one reconciliation now, and what it found."""

from django.core.management.base import BaseCommand, CommandError

from okta.models import OktaConnection, SyncRun
from okta.reconcile import run_reconciliation


class Command(BaseCommand):
    help = "Reconcile a tenant's people with its Okta groups now (okta/reconcile.py)."

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="the tenant's slug")
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--dry-run", action="store_true", help="only report the drift")
        mode.add_argument("--apply", action="store_true", help="apply, even if the connection is in dry-run mode")

    def handle(self, *args, tenant, dry_run, apply, **options):
        connection = OktaConnection.objects.select_related("tenant").filter(tenant__slug=tenant).first()
        if connection is None:
            raise CommandError(f"Tenant {tenant!r} has no Okta connection (admin console → Okta).")
        run = run_reconciliation(connection, dry_run=True if dry_run else (False if apply else None),
                                 trigger=SyncRun.Trigger.COMMAND)
        if run is None:
            raise CommandError("Another reconciliation of this tenant is running; try again when it is done.")
        self.stdout.write(f"{run.get_status_display()}{' (dry run)' if run.dry_run else ''} in {run.duration:.1f} s: "
                          f"{run.people_read} people in {len(run.groups)} groups, {run.requests} requests, "
                          f"{run.planned} changes planned, {run.applied} applied, {run.failed} failed")
        for change in run.changes:
            state = "" if change["applied"] is None else (" applied" if change["applied"] else f" FAILED: {change['error']}")
            self.stdout.write(f"  {change['action']:<9} {change['email']}: {', '.join(change['groups_before']) or '-'} → "
                              f"{', '.join(change['groups_after']) or '-'} ({change['why']}){state}")
        if run.error:
            raise CommandError(run.error)
