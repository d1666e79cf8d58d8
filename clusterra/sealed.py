"""Secrets stored in the database, encrypted with a key derived from SECRET_KEY.

Each kind of secret derives its own key (`purpose`), so a value sealed for one use cannot be opened
as another. Rotating SECRET_KEY makes every sealed value unreadable: re-enter them (docs/configuration.md).
"""

import base64

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings


def fernet(purpose: str) -> Fernet:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"clusterra {purpose}".encode()).derive(
        settings.SECRET_KEY.encode()
    )
    return Fernet(base64.urlsafe_b64encode(derived))


def seal(text: str, purpose: str) -> str:
    return fernet(purpose).encrypt(text.encode()).decode()


def unseal(token: str, purpose: str) -> str:
    """The plain text; raises cryptography.fernet.InvalidToken when SECRET_KEY changed."""
    return fernet(purpose).decrypt(token.encode()).decode()
