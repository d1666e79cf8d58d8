"""Celery tasks for accounts. Beat runs rotate_signing_key_if_due every 6 hours (settings, AWS block)."""

from celery import shared_task

from accounts.issuer import rotate_signing_key_if_due as _rotate_if_due


@shared_task(ignore_result=True)
def rotate_signing_key_if_due() -> str | None:
    key = _rotate_if_due()
    return key.kid if key else None
