from django.core.management.base import BaseCommand

from accounts.issuer import published_keys, rotate_signing_key, rotate_signing_key_if_due


class Command(BaseCommand):
    help = ("Rotate the key the portal signs AWS web-identity tokens with. Earlier keys stay in the JWKS "
            "until every token they signed has expired.")

    def add_arguments(self, parser):
        parser.add_argument("--if-due", action="store_true",
                            help="only rotate when the active key is older than CLUSTERRA_SIGNING_KEY_ROTATION_DAYS")

    def handle(self, *args, if_due=False, **options):
        key = rotate_signing_key_if_due() if if_due else rotate_signing_key(reason="manual")
        if key is None:
            self.stdout.write("Not due: the active signing key is younger than CLUSTERRA_SIGNING_KEY_ROTATION_DAYS.")
        else:
            self.stdout.write(f"New signing key {key.kid}.")
        published = ", ".join(k.kid + ("" if k.active else f" (until {k.expires_at:%Y-%m-%d %H:%M:%S} UTC)") for k in published_keys())
        self.stdout.write(f"Published: {published}")
