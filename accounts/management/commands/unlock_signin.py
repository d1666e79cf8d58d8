from django.core.management.base import BaseCommand, CommandError

from accounts import throttle


class Command(BaseCommand):
    help = ("End a sign-in lockout (accounts/throttle.py): an email's password sign-in, an address (every kind "
            "of sign-in from it), or an API token by its prefix. Writes an auth.unlock audit event.")

    def add_arguments(self, parser):
        parser.add_argument("email", nargs="?", help="the account's email (it need not exist: unknown ones are locked too)")
        parser.add_argument("--address", help="a client IP address (IPv6: its /64)")
        parser.add_argument("--token-prefix", help="an API token's prefix, the 12 hex digits after ctk_")
        parser.add_argument("--status", action="store_true", help="only show when the lock ends")

    def handle(self, email=None, address=None, token_prefix=None, status=False, **options):
        if not (email or address or token_prefix):
            raise CommandError("Give an email, --address or --token-prefix.")
        kind, key = (throttle.API_TOKEN, token_prefix) if token_prefix else (None, None)
        try:
            if status:
                queries = [(f"email {email}", {"email": email})] if email else []
                queries += [(f"address {address} ({k})", {"address": address, "kind": k}) for k in throttle.KINDS] if address else []
                queries += [(f"token prefix {token_prefix}", {"kind": kind, "key": key})] if token_prefix else []
                for label, query in queries:
                    until = throttle.lockout_status(**query)
                    self.stdout.write(f"{label}: " + (f"locked until {until:%Y-%m-%d %H:%M:%S} UTC" if until else "not locked"))
                return
            was_locked = throttle.unlock(email=email, address=address, kind=kind, key=key)
        except throttle.ThrottleUnavailable as exc:
            raise CommandError(f"Cannot reach the throttle's cache: {exc}") from None
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write("Unlocked." if was_locked else "Was not locked; its failure counters are cleared.")
