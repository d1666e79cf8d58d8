from django.core.management.base import BaseCommand

from terminal.processes import close_stale_sessions


class Command(BaseCommand):
    help = ("Finish terminal sessions of portal processes that were lost (their lease ran out) and rows from before "
            "leases. Sessions of running processes are never touched, so this is safe at any time.")

    def handle(self, *args, **options):
        count = close_stale_sessions()
        self.stdout.write(f"Closed {count} stale terminal session(s).")
