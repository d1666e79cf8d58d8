"""AWS for SSM clusters: the cluster's settings, per-user credentials through STS, and clients.

Credentials: the portal mints a short-lived token for the user (accounts/issuer.py; or, with
`token_source: "idp"`, uses the ID token from the user's own identity provider) and exchanges it with
STS AssumeRoleWithWebIdentity for the cluster's role. RoleSessionName is the stable subject, so
CloudTrail, SSM session ids and S3 session logs all name the person. Credentials are cached in this
process per (role, subject, Run As user) until CLUSTERRA_AWS_CREDENTIAL_REFRESH_MARGIN before they
expire; `forget_credentials` drops them (revocation).

Every failure surfaces as AwsError, whose message names the cause and is fit for the user. No token
or secret is ever logged or put in a message.
"""

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import botocore.session
import jwt
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ParamValidationError,
    ReadTimeoutError,
)
from django.conf import settings

from accounts.issuer import AWS_TAGS_CLAIM, RUN_AS_TAG, TokenError, mint_aws_token, user_subject, validate_subject
from clusterra import metrics
from clusters.models import Cluster

logger = logging.getLogger(__name__)

ASSUME_ACTION = "AssumeRoleWithWebIdentity"
DEFAULT_DOCUMENT = "Clusterra-Shell"
DEFAULT_AUDIENCE = "sts.amazonaws.com"
TOKEN_SOURCES = ("portal", "idp")


class AwsError(Exception):
    """An AWS step failed. str() is fit for the user and names the cause; never holds a token.

    code: the AWS error code (or the botocore exception name); action: the API action;
    detail: AWS's own message, scrubbed, for logs and admins; retryable: trying again may work;
    credentials_invalid: the cached credentials are no good — forget_credentials() and try again.
    """

    def __init__(self, message: str, *, code: str = "", action: str = "", detail: str = "", retryable: bool = False,
                 credentials_invalid: bool = False):
        super().__init__(message)
        self.message = message
        self.code = code
        self.action = action
        self.detail = detail
        self.retryable = retryable
        self.credentials_invalid = credentials_invalid


# --- the cluster's settings ----------------------------------------------------------------------

_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
_INSTANCE = re.compile(r"^(i-(?:[0-9a-f]{8}|[0-9a-f]{17})|mi-[0-9a-f]{17})$")
_ROLE_ARN = re.compile(r"^arn:(aws[a-z-]*):iam::(\d{12}):role/([\w+=,.@/-]{1,512})$", re.ASCII)
_DOCUMENT = re.compile(r"^[a-zA-Z0-9_.-]{3,128}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PREFIX = re.compile(r"^[\w!\-.*'()/=+@]{0,512}$", re.ASCII)
_KMS_KEY = re.compile(
    r"^(arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:(key|alias)/[\w/+=,.@-]{1,256}|alias/[\w/+=,.@-]{1,250}|(mrk-)?[0-9a-f-]{32,36})$",
    re.ASCII,
)
# CloudWatch Logs log group names: 1–512 of these characters (CreateLogGroup).
_LOG_GROUP = re.compile(r"^[\w.\-/#]{1,512}$", re.ASCII)
_KNOWN_KEYS = {
    "region", "instance_id", "role_arn", "document_name", "s3_bucket", "s3_prefix", "kms_key_id", "token_source",
    "endpoint_url", "endpoint_urls", "sts_endpoint_url", "audience", "session_duration", "cloudwatch_log_group",
}


@dataclass(frozen=True)
class SsmSettings:
    region: str
    instance_id: str
    role_arn: str
    document_name: str = DEFAULT_DOCUMENT
    s3_bucket: str = ""
    s3_prefix: str = ""
    cloudwatch_log_group: str = ""
    kms_key_id: str = ""
    token_source: str = "portal"  # noqa: S105 (where the web-identity token comes from, not a secret)
    endpoint_url: str = ""
    sts_endpoint_url: str = ""
    audience: str = DEFAULT_AUDIENCE
    session_duration: int = 0  # 0: CLUSTERRA_AWS_SESSION_DURATION
    endpoint_urls: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def partition(self) -> str:
        return self.role_arn.split(":")[1]

    @property
    def account_id(self) -> str:
        return self.role_arn.split(":")[4]

    @property
    def role_name(self) -> str:
        return self.role_arn.rsplit("/", 1)[1]

    def instance_arn(self, account_id: str | None = None) -> str:
        account = account_id or self.account_id
        if self.instance_id.startswith("mi-"):  # a hybrid (on-premises) managed node
            return f"arn:{self.partition}:ssm:{self.region}:{account}:managed-instance/{self.instance_id}"
        return f"arn:{self.partition}:ec2:{self.region}:{account}:instance/{self.instance_id}"

    def document_arn(self, account_id: str | None = None) -> str:
        return f"arn:{self.partition}:ssm:{self.region}:{account_id or self.account_id}:document/{self.document_name}"

    def log_group_arn(self, account_id: str | None = None) -> str:
        """The ARN of cloudwatch_log_group (in the role's account unless told otherwise)."""
        return f"arn:{self.partition}:logs:{self.region}:{account_id or self.account_id}:log-group:{self.cloudwatch_log_group}"

    def endpoint_for(self, service: str) -> str | None:
        if service == "sts":
            return self.sts_endpoint_url or None
        return self.endpoint_urls.get(service) or self.endpoint_url or None

    @property
    def duration(self) -> int:
        return self.session_duration or settings.AWS_SESSION_DURATION


def _bad(key: str, why: str) -> AwsError:
    return AwsError(f"Cluster setting {key!r} {why}", code="InvalidClusterSettings")


def _string(raw: dict, key: str, default: str = "", *, required: bool = False) -> str:
    value = raw.get(key, default)
    if value is None:
        value = default
    if not isinstance(value, str):
        raise _bad(key, f"must be a string, got {type(value).__name__}.")
    value = value.strip()
    if required and not value:
        raise _bad(key, "is required for an SSM cluster.")
    return value


def _url(key: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.query or parts.fragment:
        raise _bad(key, f"must be an http(s) URL such as https://ssm.us-east-1.amazonaws.com, got {value!r}.")
    return value.rstrip("/")


def ssm_settings(cluster: Cluster) -> SsmSettings:
    """The cluster's validated `backend_settings`; AwsError naming the bad key otherwise."""
    if cluster.backend != Cluster.Backend.SSM:
        raise AwsError(f"Cluster {cluster.slug!r} does not use the SSM backend (it uses {cluster.backend!r}).",
                       code="InvalidClusterSettings")
    raw = cluster.backend_settings
    if not isinstance(raw, dict):
        raise AwsError("The cluster's backend settings must be a JSON object.", code="InvalidClusterSettings")
    unknown = sorted(set(raw) - _KNOWN_KEYS)
    if unknown:
        raise AwsError(f"Unknown cluster setting(s): {', '.join(map(repr, unknown))} (known: {', '.join(sorted(_KNOWN_KEYS))}).",
                       code="InvalidClusterSettings")

    region = _string(raw, "region", required=True)
    if not _REGION.match(region):
        raise _bad("region", f"must be an AWS region such as us-east-1, got {region!r}.")
    instance_id = _string(raw, "instance_id", required=True)
    if not _INSTANCE.match(instance_id):
        raise _bad("instance_id", f"must be an EC2 instance id (i- and 8 or 17 hex digits) or a managed node id (mi- and 17), got {instance_id!r}.")
    role_arn = _string(raw, "role_arn", required=True)
    if not _ROLE_ARN.match(role_arn):
        raise _bad("role_arn", f"must be an IAM role ARN such as arn:aws:iam::123456789012:role/ClusterraShell, got {role_arn!r}.")
    document_name = _string(raw, "document_name", DEFAULT_DOCUMENT) or DEFAULT_DOCUMENT
    if not _DOCUMENT.match(document_name):
        raise _bad("document_name", f"must be 3–128 letters, digits, '_', '-' or '.', got {document_name!r}.")
    s3_bucket = _string(raw, "s3_bucket")
    if s3_bucket and (not _BUCKET.match(s3_bucket) or ".." in s3_bucket):
        raise _bad("s3_bucket", f"is not a valid S3 bucket name: {s3_bucket!r}.")
    s3_prefix = _string(raw, "s3_prefix").lstrip("/")
    if s3_prefix and not s3_bucket:
        raise _bad("s3_prefix", "needs s3_bucket as well.")
    if not _PREFIX.match(s3_prefix) or ".." in s3_prefix.split("/"):
        raise _bad("s3_prefix", f"must be an S3 key prefix without '..' (letters, digits and !-_.*'()/=+@), got {s3_prefix!r}.")
    cloudwatch_log_group = _string(raw, "cloudwatch_log_group")
    if cloudwatch_log_group and not _LOG_GROUP.match(cloudwatch_log_group):
        raise _bad("cloudwatch_log_group", "must be a CloudWatch Logs log group name (1–512 letters, digits and "
                   f"'_', '-', '/', '.', '#'), got {cloudwatch_log_group!r}.")
    kms_key_id = _string(raw, "kms_key_id")
    if kms_key_id and not _KMS_KEY.match(kms_key_id):
        raise _bad("kms_key_id", f"must be a KMS key id, key ARN, alias/<name> or alias ARN, got {kms_key_id!r}.")
    token_source = _string(raw, "token_source", "portal") or "portal"
    if token_source not in TOKEN_SOURCES:
        raise _bad("token_source", f"must be one of {', '.join(TOKEN_SOURCES)}, got {token_source!r}.")
    endpoint_url = _string(raw, "endpoint_url")
    if endpoint_url:
        endpoint_url = _url("endpoint_url", endpoint_url)
    sts_endpoint_url = _string(raw, "sts_endpoint_url")
    if sts_endpoint_url:
        sts_endpoint_url = _url("sts_endpoint_url", sts_endpoint_url)
    endpoint_urls = raw.get("endpoint_urls") or {}
    if not isinstance(endpoint_urls, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in endpoint_urls.items()):
        raise _bad("endpoint_urls", 'must be an object of service name to URL, e.g. {"kms": "https://..."}.')
    endpoint_urls = {service: _url(f"endpoint_urls.{service}", url) for service, url in endpoint_urls.items()}
    if "sts" in endpoint_urls:
        raise _bad("endpoint_urls", "cannot name sts: use sts_endpoint_url.")
    audience = _string(raw, "audience", DEFAULT_AUDIENCE) or DEFAULT_AUDIENCE
    if len(audience) > 255 or any(c.isspace() for c in audience):
        raise _bad("audience", "must be at most 255 characters without spaces.")
    session_duration = raw.get("session_duration", 0) or 0
    if not isinstance(session_duration, int) or isinstance(session_duration, bool) or (session_duration and not 900 <= session_duration <= 43200):
        raise _bad("session_duration", "must be a number of seconds from 900 to 43200.")
    return SsmSettings(
        region=region, instance_id=instance_id, role_arn=role_arn, document_name=document_name, s3_bucket=s3_bucket,
        s3_prefix=s3_prefix, cloudwatch_log_group=cloudwatch_log_group, kms_key_id=kms_key_id, token_source=token_source,
        endpoint_url=endpoint_url, sts_endpoint_url=sts_endpoint_url, audience=audience, session_duration=session_duration,
        endpoint_urls=endpoint_urls,
    )


# --- errors ----------------------------------------------------------------------------------------

_JWT_LIKE = re.compile(r"eyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*")
_OPAQUE = re.compile(r"[A-Za-z0-9+/=_-]{64,}")


def scrub(text: str, limit: int = 300) -> str:
    """Text from AWS or botocore with anything token-like removed, cut to `limit` characters."""
    text = _OPAQUE.sub("[redacted]", _JWT_LIKE.sub("[redacted token]", str(text)))
    return text if len(text) <= limit else text[: limit - 1] + "…"


_EXPIRED = {"ExpiredToken", "ExpiredTokenException", "RequestExpired"}
_BAD_CREDENTIALS = {"InvalidClientTokenId", "UnrecognizedClientException", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                    "InvalidSignatureException"}
_DENIED = {"AccessDenied", "AccessDeniedException"}
_THROTTLED = {"ThrottlingException", "Throttling", "TooManyUpdates", "RequestLimitExceeded", "TooManyRequestsException",
              "ProvisionedThroughputExceededException", "SlowDown"}
_AWS_FAULT = {"InternalError", "InternalServerError", "InternalFailure", "ServiceUnavailable", "ServiceUnavailableException"}
_NO_DOCUMENT = {"InvalidDocument", "InvalidDocumentVersion", "InvalidDocumentType", "InvalidDocumentContent"}


def _client_error(code: str, detail: str, action: str) -> AwsError:
    sts = action == ASSUME_ACTION
    kw = {"code": code, "action": action, "detail": detail}
    if code in _EXPIRED:
        if sts:
            return AwsError("AWS refused the sign-in token as expired (ExpiredTokenException). The portal's clock may be "
                            "wrong or, if you sign in through your identity provider, sign in again.", **kw)
        return AwsError(f"The AWS credentials for this session have expired ({action}: {code}). Try again; the portal "
                        "fetches new ones.", credentials_invalid=True, retryable=True, **kw)
    if code == "InvalidIdentityToken":
        return AwsError("AWS did not accept the identity token (InvalidIdentityToken): IAM needs an OIDC identity provider "
                        f"for the token's issuer (the portal's is CLUSTERRA_ISSUER_URL = {settings.AWS_ISSUER_URL}) with "
                        "a matching audience, and AWS must be able to fetch its JWKS over HTTPS.", **kw)
    if code == "IDPCommunicationError":
        return AwsError("AWS could not reach the token issuer to fetch its signing keys (IDPCommunicationError): "
                        f"{settings.AWS_ISSUER_URL}/.well-known/jwks.json must be reachable from the internet over HTTPS.",
                        retryable=True, **kw)
    if code == "IDPRejectedClaim":
        return AwsError("AWS rejected the identity token's claims (IDPRejectedClaim): the role's trust policy does not accept "
                        "this user (its aud/sub conditions) or does not allow sts:TagSession.", **kw)
    if code in _DENIED:
        if sts:
            return AwsError("AWS denied assuming the cluster's role (AccessDenied): its trust policy does not allow this "
                            "portal user; compare it with `manage.py aws_bootstrap`.", **kw)
        return AwsError(f"AWS denied {action} (AccessDenied): the cluster role's permissions do not allow it (compare them "
                        "with `manage.py aws_bootstrap`), or the session was revoked.", **kw)
    if code in _BAD_CREDENTIALS:
        return AwsError(f"AWS does not recognise the session's credentials ({action}: {code}): they were revoked or have "
                        "expired. Try again; the portal fetches new ones.", credentials_invalid=True, retryable=True, **kw)
    if code == "TargetNotConnected":
        return AwsError("The instance is not connected to Session Manager (TargetNotConnected): its SSM agent is offline, "
                        "or the instance is not managed by SSM.", **kw)
    if code == "InvalidInstanceId":
        return AwsError(f"The instance is not managed by SSM, its SSM agent is offline, or it is in another region or "
                        f"account ({action}: InvalidInstanceId).", **kw)
    if code in _NO_DOCUMENT:
        return AwsError(f"The SSM document is missing in this account and region, or is not the right type ({action}: "
                        f"{code}); create it from `manage.py aws_bootstrap`.", **kw)
    if code in _THROTTLED:
        return AwsError(f"AWS is throttling requests ({action}: {code}); try again in a moment.", retryable=True, **kw)
    if code in _AWS_FAULT:
        return AwsError(f"AWS had an internal error ({action}: {code}); try again.", retryable=True, **kw)
    if code == "DoesNotExistException":
        return AwsError(f"The session no longer exists on AWS ({action}).", **kw)
    if code == "InvalidCommandId":
        return AwsError(f"SSM does not know this command ({action}: InvalidCommandId).", **kw)
    if code == "InvocationDoesNotExist":
        return AwsError(f"SSM does not know this command on the instance yet ({action}).", retryable=True, **kw)
    if code == "RegionDisabledException":
        return AwsError("STS is not activated for this region in the AWS account (RegionDisabledException); activate it "
                        "in the IAM account settings.", **kw)
    if code == "PackedPolicyTooLarge":
        return AwsError("The identity token's session tags are too large for STS (PackedPolicyTooLarge).", **kw)
    if code in ("ValidationError", "ValidationException") and "DurationSeconds" in detail:
        return AwsError("The cluster role's maximum session duration is shorter than the portal asks for: raise the role's "
                        "MaxSessionDuration or lower CLUSTERRA_AWS_SESSION_DURATION / the cluster's session_duration.", **kw)
    return AwsError(f"AWS refused {action}: {code}: {detail or 'no message'}", **kw)


def describe_client_error(exc: BaseException, action: str) -> AwsError:
    """An AwsError naming the cause of a botocore failure (ClientError or BotoCoreError) in `action`."""
    if isinstance(exc, AwsError):
        return exc
    error = _describe_botocore_error(exc, action)
    metrics.AWS_ERRORS.labels(code=metrics.short_label(error.code)).inc()  # every AWS failure is mapped here, once
    return error


def _describe_botocore_error(exc: BaseException, action: str) -> AwsError:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {}) if isinstance(exc.response, dict) else {}
        code = str(error.get("Code") or "Unknown")
        return _client_error(code, scrub(error.get("Message") or ""), action)
    name = type(exc).__name__
    kw = {"code": name, "action": action, "detail": scrub(str(exc))}
    if isinstance(exc, EndpointConnectionError):
        return AwsError(f"Could not connect to the AWS endpoint for {action} ({scrub(exc.kwargs.get('endpoint_url', ''))}): "
                        "check the region, the network path and any VPC endpoint settings.", retryable=True, **kw)
    if isinstance(exc, ConnectTimeoutError):
        return AwsError(f"Timed out connecting to AWS for {action} after {settings.AWS_CONNECT_TIMEOUT} s: check the network "
                        "path to the endpoint.", retryable=True, **kw)
    if isinstance(exc, ReadTimeoutError):
        return AwsError(f"AWS did not answer {action} within {settings.AWS_READ_TIMEOUT} s; try again.", retryable=True, **kw)
    if isinstance(exc, ConnectionClosedError):
        return AwsError(f"AWS closed the connection during {action}; try again.", retryable=True, **kw)
    if isinstance(exc, ParamValidationError):  # its text may quote parameter values: keep it out
        return AwsError(f"The portal built an invalid {action} request (a bug; see the server log).", code=name, action=action)
    if isinstance(exc, BotoCoreError):
        return AwsError(f"The call to AWS ({action}) failed: {kw['detail'] or name}.", retryable=True, **kw)
    return AwsError(f"The call to AWS ({action}) failed: {name}.", code=name, action=action)


# --- clients ---------------------------------------------------------------------------------------

_session_lock = threading.Lock()
_botocore_session = None


def _config(**extra) -> Config:
    return Config(connect_timeout=settings.AWS_CONNECT_TIMEOUT, read_timeout=settings.AWS_READ_TIMEOUT,
                  retries={"mode": "standard", "max_attempts": settings.AWS_MAX_ATTEMPTS}, **extra)


def _create_client(service: str, **kwargs):
    global _botocore_session
    with _session_lock:  # creating clients from one botocore session is not thread-safe; using them is
        if _botocore_session is None:
            _botocore_session = botocore.session.get_session()
        return _botocore_session.create_client(service, **kwargs)


def _sts_client(s: SsmSettings):
    """An unsigned STS client: AssumeRoleWithWebIdentity is authenticated by the token alone."""
    return _create_client("sts", region_name=s.region, endpoint_url=s.endpoint_for("sts"),
                          config=_config(signature_version=UNSIGNED))


def call(client, operation: str, **params):
    """client.<operation>(**params), with any botocore failure raised as AwsError (and logged)."""
    action = client.meta.method_to_api_mapping.get(operation, operation)
    try:
        return getattr(client, operation)(**params)
    except (ClientError, BotoCoreError) as exc:
        error = describe_client_error(exc, action)
    logger.warning("aws %s failed: %s (%s)", action, error.code, error.detail or error.message)
    raise error


# --- credentials -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: datetime
    assumed_role_arn: str = ""


_cache: dict[tuple[str, str, str], Credentials] = {}
_cache_lock = threading.Lock()
_fetch_locks: dict[tuple[str, str, str], threading.Lock] = {}
_clients: dict[tuple, tuple[Credentials, object]] = {}


_warned_issuers: set[str] = set()


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _fresh(creds: Credentials | None) -> bool:
    margin = timedelta(seconds=settings.AWS_CREDENTIAL_REFRESH_MARGIN)
    return creds is not None and creds.expiration - _utcnow() > margin


def _idp_token(id_token: str | None, run_as: str) -> str:
    """The user's IdP ID token, checked enough to give a clear message before STS gives a vague one."""
    if not id_token:
        raise AwsError("This cluster signs in to AWS with your identity provider's token, and the portal has none for "
                       "this session: sign out and sign in again through your identity provider.", code="MissingIdToken")
    try:
        claims = jwt.decode(id_token, options={"verify_signature": False, "verify_aud": False, "verify_exp": False})
    except jwt.PyJWTError:
        raise AwsError("Your identity provider's token is not a JWT: sign in again through your identity provider.",
                       code="InvalidIdToken") from None
    if isinstance(claims.get("exp"), int | float) and claims["exp"] <= time.time():
        raise AwsError("Your identity provider's token has expired: sign in again through your identity provider.",
                       code="ExpiredIdToken")
    tags = claims.get(AWS_TAGS_CLAIM)
    principal_tags = tags.get("principal_tags", {}) if isinstance(tags, dict) else {}
    tag = principal_tags.get(RUN_AS_TAG)
    value = tag[0] if isinstance(tag, list) and tag else tag
    if value != run_as:
        raise AwsError(f"Your identity provider's token does not carry the session tag {RUN_AS_TAG} = {run_as!r} (your "
                       f"account on this cluster); ask an administrator to add it to the {AWS_TAGS_CLAIM} claim (docs/aws.md).",
                       code="MissingRunAsTag")
    return id_token


def _assume(s: SsmSettings, *, subject: str, email: str, run_as: str, token_source: str, id_token: str | None) -> Credentials:
    try:
        validate_subject(subject)  # it is the RoleSessionName too
    except TokenError as exc:
        raise AwsError(str(exc), code="InvalidTokenInput", action=ASSUME_ACTION) from None
    if token_source == "idp":  # noqa: S105 (a token source name)
        token = _idp_token(id_token, run_as)
    else:
        try:
            token = mint_aws_token(subject=subject, email=email, run_as=run_as, audience=s.audience)
        except TokenError as exc:
            raise AwsError(str(exc), code="InvalidTokenInput", action=ASSUME_ACTION) from None
        if not settings.AWS_ISSUER_URL.startswith("https://") and settings.AWS_ISSUER_URL not in _warned_issuers:
            _warned_issuers.add(settings.AWS_ISSUER_URL)  # once per process: the STS error names it again
            logger.warning("CLUSTERRA_ISSUER_URL is %s: AWS only trusts an https issuer it can reach (docs/aws.md)",
                           settings.AWS_ISSUER_URL)
    started = time.monotonic()
    try:
        response = _sts_client(s).assume_role_with_web_identity(
            RoleArn=s.role_arn, RoleSessionName=subject, WebIdentityToken=token, DurationSeconds=s.duration,
        )
    except (ClientError, BotoCoreError) as exc:
        error = describe_client_error(exc, ASSUME_ACTION)
        logger.warning("sts %s subject=%s role=%s source=%s: failed %s in %.2f s: %s", ASSUME_ACTION, subject, s.role_arn,
                       token_source, error.code, time.monotonic() - started, error.detail or error.message)
        raise error from None
    raw = response["Credentials"]
    expiration = raw["Expiration"]
    if expiration.tzinfo is None:
        expiration = expiration.replace(tzinfo=UTC)
    creds = Credentials(access_key=raw["AccessKeyId"], secret_key=raw["SecretAccessKey"], session_token=raw["SessionToken"],
                        expiration=expiration, assumed_role_arn=response.get("AssumedRoleUser", {}).get("Arn", ""))
    logger.info("sts %s subject=%s role=%s source=%s run_as=%s: ok in %.2f s, expires %s", ASSUME_ACTION, subject, s.role_arn,
                token_source, run_as, time.monotonic() - started, expiration.isoformat())
    return creds


def get_credentials(s: SsmSettings, *, subject: str, email: str, run_as: str, id_token: str | None = None,
                    token_source: str | None = None) -> Credentials:
    """Cached STS credentials for (role, subject, Run As user), fetched when missing or near expiry."""
    key = (s.role_arn, subject, run_as)
    with _cache_lock:
        creds = _cache.get(key)
        if _fresh(creds):
            return creds
        lock = _fetch_locks.setdefault(key, threading.Lock())
    with lock:  # one STS call per key at a time; the others wait and take its result
        with _cache_lock:
            creds = _cache.get(key)
        if _fresh(creds):
            return creds
        creds = _assume(s, subject=subject, email=email, run_as=run_as, token_source=token_source or s.token_source,
                        id_token=id_token)
        with _cache_lock:
            _cache[key] = creds
        return creds


def forget_credentials(subject: str | None = None) -> int:
    """Drop cached credentials (and clients) of one subject, or all of them. Returns how many."""
    with _cache_lock:
        keys = [key for key in _cache if subject is None or key[1] == subject]
        for key in keys:
            del _cache[key]
            _fetch_locks.pop(key, None)
        for client_key in [k for k in _clients if subject is None or k[1] == subject]:
            del _clients[client_key]
    if keys:
        logger.info("forgot AWS credentials of %s (%d)", subject or "everyone", len(keys))
    return len(keys)


def _client(s: SsmSettings, service: str, *, subject: str, email: str, run_as: str, id_token: str | None,
            token_source: str | None = None):
    creds = get_credentials(s, subject=subject, email=email, run_as=run_as, id_token=id_token, token_source=token_source)
    key = (s.role_arn, subject, run_as, service, s.region, s.endpoint_for(service))
    with _cache_lock:
        cached = _clients.get(key)
    if cached is not None and cached[0] is creds:
        return cached[1]
    client = _create_client(service, region_name=s.region, endpoint_url=s.endpoint_for(service),
                            aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key,
                            aws_session_token=creds.session_token, config=_config())
    with _cache_lock:
        _clients[key] = (creds, client)
    return client


def client_for(cluster: Cluster, service: str, *, subject: str, email: str, run_as: str, id_token: str | None = None):
    """A botocore client for `service` in the cluster's region, with the user's cached STS credentials.

    Timeouts and standard retries come from CLUSTERRA_AWS_*; endpoint_url (or endpoint_urls[service])
    applies to every service but STS. Raises AwsError.
    """
    return _client(ssm_settings(cluster), service, subject=subject, email=email, run_as=run_as, id_token=id_token)


def account_subject(account) -> str:
    """The STS subject of a ClusterAccount's person (see accounts.issuer.user_subject)."""
    return user_subject(account.user, account.cluster.tenant)


def account_client(account, service: str, *, id_token: str | None = None):
    """client_for as the account's user, running as its POSIX user. Only active accounts get one."""
    if account.state != account.State.ACTIVE:
        raise AwsError(f"Your account on this cluster is {account.state}: no AWS access.", code="AccountNotActive")
    return client_for(account.cluster, service, subject=account_subject(account), email=account.user.email,
                      run_as=account.posix_username, id_token=id_token)


def poller_subject(cluster: Cluster) -> str:
    return f"cluster-{cluster.pk}-poller"


def _service_client(cluster: Cluster, service: str, *, subject: str, run_as: str):
    """A client for the portal's own work on a cluster (no person): always a portal-issued token."""
    return _client(ssm_settings(cluster), service, subject=subject, email="", run_as=run_as, id_token=None,
                   token_source="portal")  # noqa: S106 (a token source name)


def poller_client(cluster: Cluster, posix_username: str, service: str):
    """A client for the job poller: subject cluster-<id>-poller."""
    return _service_client(cluster, service, subject=poller_subject(cluster), run_as=posix_username)


# Provisioning (clusters/provisioning.py) creates, locks and unlocks POSIX accounts with SendCommand,
# which runs as root on the head node whatever the Run As tag says. There is no person and no POSIX
# account behind it, so it has a subject of its own (CloudTrail names it) and a Run As user that must
# not exist on the head node: a Session Manager session with these credentials would then fail.
PROVISIONER_RUN_AS = "clusterra-provisioner"


def provisioner_subject(cluster: Cluster) -> str:
    return f"cluster-{cluster.pk}-provisioner"


def provisioner_client(cluster: Cluster, service: str):
    """A client for account provisioning: subject cluster-<id>-provisioner."""
    return _service_client(cluster, service, subject=provisioner_subject(cluster), run_as=PROVISIONER_RUN_AS)


# Session logs (terminal/recordings.py) are read from the cluster's S3 bucket (s3_bucket/s3_prefix) and CloudWatch Logs
# log group (cloudwatch_log_group), where the SSM agent writes them, with a subject of their own, like provisioning: no
# person behind it, and a Run As user that must not exist on the head node, so these credentials cannot open a shell there.
AUDITOR_RUN_AS = "clusterra-auditor"


def auditor_subject(cluster: Cluster) -> str:
    return f"cluster-{cluster.pk}-auditor"


def auditor_client(cluster: Cluster, service: str):
    """A client for fetching session logs: subject cluster-<id>-auditor."""
    return _service_client(cluster, service, subject=auditor_subject(cluster), run_as=AUDITOR_RUN_AS)


def client_config(**extra) -> Config:
    """The timeouts and retries of every AWS client of the portal (CLUSTERRA_AWS_*), for clients made elsewhere."""
    return _config(**extra)
