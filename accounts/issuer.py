"""The portal as an OpenID Connect token issuer that AWS trusts (docs/aws.md).

An IAM OIDC provider for CLUSTERRA_ISSUER_URL reads `/.well-known/openid-configuration` and the JWKS
it points to. The portal signs a short-lived RS256 token per user and cluster (`mint_aws_token`) and
exchanges it with STS AssumeRoleWithWebIdentity for that user's credentials (clusters/aws.py). The
token carries a stable `sub` (never the email) and the session tag `SSMSessionRunAs` = the user's
POSIX name, which Session Manager's Run As uses to pick the OS account.

Signing keys live in the database (SigningKey): one active key signs; rotation creates a new active
key and keeps the old ones in the JWKS until every token they signed has expired (plus a margin).
"""

import base64
import hashlib
import json
import logging
import re
import threading
import time
import uuid
from datetime import timedelta

import jwt
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import SigningKey
from audit.services import record_event
from clusterra import sealed

logger = logging.getLogger(__name__)

ALGORITHM = "RS256"
KEY_BITS = 2048
# A retired key stays in the JWKS this long after the last token it could have signed expires
# (clock skew between us and AWS, and JWKS caches that refresh late).
RETIRED_KEY_MARGIN = timedelta(minutes=10)

# Session tags for AssumeRoleWithWebIdentity travel in this claim, shaped
#   {"principal_tags": {"<key>": ["<value>"]}, "transitive_tag_keys": ["<key>", ...]}
# (IAM User Guide, "Pass session tags in AWS STS" → "Passing session tags using AssumeRoleWithWebIdentity",
# https://docs.aws.amazon.com/IAM/latest/UserGuide/id_session-tags.html#id_session-tags_adding-assume-role-idp:
# each principal tag value is a list of strings). The role's trust policy must allow sts:TagSession.
AWS_TAGS_CLAIM = "https://aws.amazon.com/tags"
RUN_AS_TAG = "SSMSessionRunAs"  # Session Manager's Run As tag (SSM User Guide, session-preferences-run-as)
# Limits from the same page: at most 50 session tags, keys ≤ 128 characters, values ≤ 256.
MAX_SESSION_TAGS = 50
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
_TAG_TEXT = re.compile(r"^[\w .:/=+\-@]*$")  # letters, digits, spaces and _ . : / = + - @ (IAM tag rules)

# Same rule as clusters.models.posix_username_validator; root is never a Run As user (SSM refuses it too).
_POSIX_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# The subject is also the STS RoleSessionName, so it must fit that parameter's pattern and length.
_SUBJECT = re.compile(r"^[\w+=,.@-]{2,64}$", re.ASCII)

CLAIMS_SUPPORTED = ["iss", "sub", "aud", "iat", "nbf", "exp", "jti", "email", AWS_TAGS_CLAIM]


class TokenError(ValueError):
    """A token cannot be minted for these inputs (the message names the bad one)."""


# --- subjects --------------------------------------------------------------------------------


def user_subject(user, tenant) -> str:
    """The stable `sub` (and STS RoleSessionName) of a person acting in a tenant.

    It names the tenant so a role trusted by one tenant's clusters (its trust policy matches
    `tenant-<id>-user-*`) cannot be assumed for another tenant's users, even if an admin there points
    a cluster at it. Database ids never change; emails do, and never appear in it.
    """
    return f"tenant-{tenant.pk}-user-{user.pk}"


def validate_subject(subject: str) -> str:
    if not isinstance(subject, str) or not _SUBJECT.match(subject):
        raise TokenError(f"The token subject {subject!r} must be 2–64 characters of letters, digits and +=,.@_-.")
    return subject


def validate_run_as(run_as: str) -> str:
    if not isinstance(run_as, str) or not _POSIX_NAME.match(run_as):
        raise TokenError(f"The Run As user {run_as!r} is not a valid POSIX user name.")
    if run_as == "root":
        raise TokenError("The Run As user may never be root.")
    return run_as


def session_tags_claim(principal_tags: dict[str, str], transitive: list[str] | tuple[str, ...] = ()) -> dict:
    """The value of the `https://aws.amazon.com/tags` claim, checked against the STS tag limits."""
    if len(principal_tags) > MAX_SESSION_TAGS:
        raise TokenError(f"At most {MAX_SESSION_TAGS} session tags may be passed, got {len(principal_tags)}.")
    for key, value in principal_tags.items():
        if not key or len(key) > MAX_TAG_KEY or not _TAG_TEXT.match(key) or key.lower().startswith("aws:"):
            raise TokenError(f"Session tag key {key!r} is not allowed (1–{MAX_TAG_KEY} characters, no 'aws:' prefix).")
        if not isinstance(value, str) or len(value) > MAX_TAG_VALUE or not _TAG_TEXT.match(value):
            raise TokenError(f"Session tag {key} has a value that is too long or has characters AWS refuses.")
    unknown = [key for key in transitive if key not in principal_tags]
    if unknown:
        raise TokenError(f"Transitive tag keys must be session tags too: {', '.join(unknown)}.")
    return {"principal_tags": {key: [value] for key, value in principal_tags.items()}, "transitive_tag_keys": list(transitive)}


# --- signing keys ------------------------------------------------------------------------------

_key_cache: dict[str, rsa.RSAPrivateKey] = {}
_key_cache_lock = threading.Lock()


def _fernet() -> Fernet:
    return sealed.fernet("signing-key storage")


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _public_jwk(private_key: rsa.RSAPrivateKey) -> dict:
    numbers = private_key.public_key().public_numbers()
    jwk = {"kty": "RSA", "n": _b64url_uint(numbers.n), "e": _b64url_uint(numbers.e)}
    # kid = the RFC 7638 thumbprint: SHA-256 of the required members in lexicographic order, no spaces.
    canonical = json.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"), sort_keys=True)
    kid = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()
    return {**jwk, "kid": kid, "use": "sig", "alg": ALGORITHM}


def _new_key() -> SigningKey:
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    jwk = _public_jwk(private_key)
    with _key_cache_lock:
        _key_cache[jwk["kid"]] = private_key
    return SigningKey(kid=jwk["kid"], private_key_encrypted=_fernet().encrypt(pem).decode(), public_jwk=jwk, active=True)


def _private_key(key: SigningKey) -> rsa.RSAPrivateKey:
    with _key_cache_lock:
        cached = _key_cache.get(key.kid)
    if cached is not None:
        return cached
    pem = _fernet().decrypt(key.private_key_encrypted.encode())  # InvalidToken when SECRET_KEY changed
    private_key = serialization.load_pem_private_key(pem, password=None)
    with _key_cache_lock:
        _key_cache[key.kid] = private_key
    return private_key


def _retire(keys, now) -> list[str]:
    expires = now + timedelta(seconds=settings.AWS_TOKEN_LIFETIME) + RETIRED_KEY_MARGIN
    kids = [key.kid for key in keys]
    SigningKey.objects.filter(kid__in=kids).update(active=False, retired_at=now, expires_at=expires)
    return kids


def rotate_signing_key(*, actor=None, reason: str = "manual") -> SigningKey:
    """Make a new key the signer; earlier keys stay published until their tokens have expired."""
    now = timezone.now()
    key = _new_key()  # RSA key generation takes a while: not inside the transaction (SQLite holds its write lock)
    with transaction.atomic():
        previous = list(SigningKey.objects.select_for_update().filter(active=True))
        retired = _retire(previous, now)
        expired = list(SigningKey.objects.filter(active=False, expires_at__lt=now).values_list("kid", flat=True))
        SigningKey.objects.filter(kid__in=expired).delete()
        key.save()
        record_event("signing_key.rotate", actor=actor, target=key,
                     data={"kid": key.kid, "retired": retired, "removed": expired, "reason": reason})
    logger.info("signing key rotated (%s): new kid %s, retired %s, removed %s", reason, key.kid, retired or "none", expired or "none")
    return key


def rotate_signing_key_if_due() -> SigningKey | None:
    """Rotate when there is no active key or it is older than CLUSTERRA_SIGNING_KEY_ROTATION_DAYS."""
    key = SigningKey.objects.filter(active=True).first()
    if key is not None and key.created_at > timezone.now() - timedelta(days=settings.SIGNING_KEY_ROTATION_DAYS):
        return None
    return rotate_signing_key(reason="scheduled" if key else "first key")


def active_signing_key() -> tuple[SigningKey, rsa.RSAPrivateKey]:
    """The key new tokens are signed with; created on first use."""
    for _attempt in range(3):
        key = SigningKey.objects.filter(active=True).first()
        if key is None:
            key = _new_key()
            try:
                with transaction.atomic():
                    key.save()
                    record_event("signing_key.create", target=key, data={"kid": key.kid})
                logger.info("signing key created on first use: kid %s", key.kid)
            except IntegrityError:  # another process created it first
                continue
        try:
            return key, _private_key(key)
        except (InvalidToken, ValueError):
            # Encrypted under another SECRET_KEY: keep its public half published, sign with a new key.
            logger.warning("signing key %s cannot be decrypted (SECRET_KEY changed?); rotating", key.kid)
            rotate_signing_key(reason="undecryptable")
    raise RuntimeError("No usable signing key could be created")


def published_keys():
    now = timezone.now()
    return SigningKey.objects.filter(Q(active=True) | Q(expires_at__gt=now))


# --- documents served under /.well-known/ ---------------------------------------------------------


def jwks() -> dict:
    if not SigningKey.objects.filter(active=True).exists():
        active_signing_key()  # AWS may fetch the JWKS before the first token is minted
    return {"keys": [dict(key.public_jwk) for key in published_keys()]}


def openid_configuration() -> dict:
    issuer = settings.AWS_ISSUER_URL
    return {
        "issuer": issuer,
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [ALGORITHM],
        "claims_supported": CLAIMS_SUPPORTED,
    }


# --- tokens ----------------------------------------------------------------------------------


def mint_aws_token(*, subject: str, email: str, run_as: str, audience: str) -> str:
    """A signed token for STS AssumeRoleWithWebIdentity; valid CLUSTERRA_AWS_TOKEN_LIFETIME seconds.

    Treat the result as a credential: never log it or put it in a URL.
    """
    validate_subject(subject)
    validate_run_as(run_as)
    if not isinstance(audience, str) or not audience or len(audience) > 255 or any(c.isspace() for c in audience):
        raise TokenError(f"The token audience {audience!r} must be a non-empty string without spaces.")
    if email and ("@" not in email or len(email) > 254):
        raise TokenError("The email claim must be an email address.")
    key, private_key = active_signing_key()
    now = int(time.time())
    claims = {
        "iss": settings.AWS_ISSUER_URL,
        "sub": subject,
        "aud": audience,
        "iat": now,
        "nbf": now - 30,  # tolerate a clock on AWS's side that is slightly behind ours
        "exp": now + settings.AWS_TOKEN_LIFETIME,
        "jti": uuid.uuid4().hex,
        # Transitive, so a role chained from this session keeps the same OS user (it cannot be overridden).
        AWS_TAGS_CLAIM: session_tags_claim({RUN_AS_TAG: run_as}, transitive=[RUN_AS_TAG]),
    }
    if email:
        claims["email"] = email
    return jwt.encode(claims, private_key, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": "JWT"})
