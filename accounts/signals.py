"""Log lines for sign-in: who signed in, and that a sign-in failed (never what was typed)."""

import logging

from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.dispatch import receiver

logger = logging.getLogger("clusterra.auth")


@receiver(user_logged_in)
def _signed_in(sender, request, user, **kwargs):
    logger.info("signed in", extra={"user_id": user.pk})


@receiver(user_login_failed)
def _sign_in_failed(sender, credentials, request=None, **kwargs):
    # Not the typed user name: people type their password into that field too. request_id ties it to the access log.
    address = request.META.get("REMOTE_ADDR", "") if request is not None else ""
    logger.warning("sign-in failed from %s", address or "unknown address")
