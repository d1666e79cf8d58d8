from django.core.management.base import BaseCommand

from terminal.actions import close_stale_sessions


class Command(BaseCommand):
    help = "Finish terminal sessions left open by a server that stopped (run before starting a single server)."

    def handle(self, *args, **options):
        count = close_stale_sessions()
        self.stdout.write(f"Closed {count} stale terminal session(s).")
