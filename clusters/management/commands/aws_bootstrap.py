"""Print the AWS resources an SSM cluster needs, as JSON (docs/aws.md walks through creating them).

    python manage.py aws_bootstrap --cluster acme/hpc [--account-id 123456789012]

Output keys: oidc_provider, role (with its trust policy), permissions_policy, session_document,
backend_settings (as validated), warnings. Nothing is created in AWS by this command.
"""

import json
import math
import re
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from accounts.issuer import RUN_AS_TAG
from clusterra.durations import duration_words
from clusters.aws import AwsError, SsmSettings, auditor_subject, poller_subject, provisioner_subject, ssm_settings
from clusters.models import Cluster

POLICY_VERSION = "2012-10-17"
RUN_SHELL_SCRIPT = "AWS-RunShellScript"
# Written to the shell's stdin when a session starts: the agent setuid()s straight into the Run As
# user without a login, so start their login shell in their home directory.
SHELL_PROFILE_LINUX = 'cd "$HOME" 2>/dev/null; [ -x /bin/bash ] && exec /bin/bash -l'


def _minutes(seconds: int, low: int, high: int) -> tuple[int, bool]:
    """Seconds → whole minutes rounded up (AWS never ends a session before the portal would), clamped."""
    minutes = max(1, math.ceil(seconds / 60))
    clamped = min(max(minutes, low), high)
    return clamped, clamped != minutes


def _kms_key_arn(s: SsmSettings, account: str) -> str:
    key = s.kms_key_id
    if key.startswith("arn:"):
        return key
    if key.startswith("alias/"):
        return f"arn:{s.partition}:kms:{s.region}:{account}:{key}"
    return f"arn:{s.partition}:kms:{s.region}:{account}:key/{key}"


def _prefix(s: SsmSettings) -> str:
    return s.s3_prefix.rstrip("/")


def provider_id(issuer: str) -> str:
    """The IAM name of an OIDC provider: the issuer URL without its scheme (host and path)."""
    return issuer.split("://", 1)[1].rstrip("/")


def trust_policy(cluster: Cluster, s: SsmSettings, account: str, issuer: str) -> dict:
    provider = provider_id(issuer)
    provider_arn = f"arn:{s.partition}:iam::{account}:oidc-provider/{provider}"
    statements = []
    portal_subjects = []
    if s.token_source == "portal":  # noqa: S105 (a token source name)
        portal_subjects.append(f"tenant-{cluster.tenant_id}-user-*")
    if cluster.poll_posix_username:
        portal_subjects.append(poller_subject(cluster))
    # Onboarding and offboarding create and lock POSIX accounts with the portal's own token (clusters/provisioning.py).
    portal_subjects.append(provisioner_subject(cluster))
    if s.s3_bucket or s.cloudwatch_log_group:  # the portal fetches the agent's session logs (terminal/recordings.py)
        portal_subjects.append(auditor_subject(cluster))
    if portal_subjects:
        statements.append({
            "Sid": "ClusterraPortalTokens",
            "Effect": "Allow",
            "Principal": {"Federated": provider_arn},
            # sts:TagSession: the token passes the SSMSessionRunAs session tag.
            "Action": ["sts:AssumeRoleWithWebIdentity", "sts:TagSession"],
            "Condition": {
                "StringEquals": {f"{provider}:aud": s.audience},
                "StringLike": {f"{provider}:sub": portal_subjects},
            },
        })
    if s.token_source == "idp":  # noqa: S105 (a token source name)
        idp = "<IDP_ISSUER_HOST_AND_PATH>"
        statements.append({
            "Sid": "IdentityProviderTokens",
            "Effect": "Allow",
            "Principal": {"Federated": f"arn:{s.partition}:iam::{account}:oidc-provider/{idp}"},
            "Action": ["sts:AssumeRoleWithWebIdentity", "sts:TagSession"],
            "Condition": {
                "StringEquals": {f"{idp}:aud": "<IDP_CLIENT_ID>"},
                "StringLike": {f"{idp}:sub": ["<SUBJECTS_OF_THIS_TENANT'S_USERS>"]},
            },
        })
    return {"Version": POLICY_VERSION, "Statement": statements}


def permissions_policy(s: SsmSettings, account: str) -> dict:
    part, region = s.partition, s.region
    instance_arn = s.instance_arn(account)
    sessions = f"arn:{part}:ssm:{region}:{account}:session"
    statements = [
        {
            # Only this instance, only through this document; the condition makes a StartSession that
            # names no document (which would fall back to the account's default shell) fail.
            "Sid": "StartShellOnThisInstanceWithThisDocument",
            "Effect": "Allow",
            "Action": ["ssm:StartSession"],
            "Resource": [instance_arn, s.document_arn(account)],
            "Condition": {"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "true"}},
        },
        {
            # Federated callers: Session Manager tags each session with aws:ssmmessages:session-id =
            # <role-id>:<role-session-name>, which is ${aws:userid}: the caller's own sessions only.
            "Sid": "EndOrResumeOwnSessions",
            "Effect": "Allow",
            "Action": ["ssm:TerminateSession", "ssm:ResumeSession"],
            "Resource": [f"{sessions}/*"],
            "Condition": {"StringLike": {"ssm:resourceTag/aws:ssmmessages:session-id": ["${aws:userid}"]}},
        },
        {
            # As in AWS's current Session Manager sample end-user policies.
            "Sid": "OpenOwnDataChannels",
            "Effect": "Allow",
            "Action": ["ssmmessages:OpenDataChannel"],
            "Resource": [f"{sessions}/${{aws:userid}}-*"],
        },
        {
            "Sid": "RunCommandsOnThisInstance",
            "Effect": "Allow",
            "Action": ["ssm:SendCommand"],
            "Resource": [instance_arn, f"arn:{part}:ssm:{region}::document/{RUN_SHELL_SCRIPT}"],
        },
        {
            # The executor polls its command's result and cancels it on timeout. Neither call is scoped
            # to an instance here: a caller must know the command id, which only the sender learns.
            "Sid": "ReadOrCancelCommands",
            "Effect": "Allow",
            "Action": ["ssm:GetCommandInvocation", "ssm:CancelCommand"],
            "Resource": ["*"],
        },
    ]
    if s.kms_key_id:
        statements.append({
            "Sid": "SessionEncryptionKey",
            "Effect": "Allow",
            "Action": ["kms:GenerateDataKey"],
            "Resource": [_kms_key_arn(s, account)],
        })
    if s.s3_bucket:
        prefix = _prefix(s)
        statements.append({
            "Sid": "ReadSessionLogsAndCommandOutput",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": [f"arn:{part}:s3:::{s.s3_bucket}/{prefix + '/' if prefix else ''}*"],
        })
        statements.append({
            "Sid": "ListSessionLogsAndCommandOutput",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": [f"arn:{part}:s3:::{s.s3_bucket}"],
            "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*" if prefix else "*"]}},
        })
    if s.cloudwatch_log_group:
        # The agent streams each session into the log stream named after its session id; the portal reads it back.
        # DescribeLogStreams is authorized on the group (written `…:log-group:<name>` or `…:log-group:<name>:*`),
        # GetLogEvents on the stream (`…:log-group:<name>:log-stream:<session id>`). Names hold no ':', so both
        # patterns stay within this group.
        group = s.log_group_arn(account)
        statements.append({
            "Sid": "ReadSessionLogStreams",
            "Effect": "Allow",
            "Action": ["logs:DescribeLogStreams", "logs:GetLogEvents"],
            "Resource": [group, f"{group}:*"],
        })
    return {"Version": POLICY_VERSION, "Statement": statements}


def session_document(cluster: Cluster, s: SsmSettings) -> tuple[dict, list[str]]:
    notes = []
    idle, idle_clamped = _minutes(cluster.idle_timeout, 1, 60)
    longest, max_clamped = _minutes(cluster.max_session_duration, 1, 1440)
    if idle_clamped:
        notes.append(f"idleSessionTimeout clamped to {idle} min (Session Manager allows 1–60); the portal still applies "
                     f"its own idle timeout of {duration_words(cluster.idle_timeout)}.")
    if max_clamped:
        notes.append(f"maxSessionDuration clamped to {longest} min (Session Manager allows 1–1440); the portal still "
                     f"applies its own limit of {duration_words(cluster.max_session_duration)}.")
    # Session document schema: AWS SSM User Guide, "Session document schema" (session-manager-schema);
    # the two timeouts are strings of minutes, as in SSM-SessionManagerRunShell.
    content = {
        "schemaVersion": "1.0",
        "description": f"Clusterra shell for {cluster.tenant.slug}/{cluster.slug}",
        "sessionType": "Standard_Stream",
        "inputs": {
            "s3BucketName": s.s3_bucket,
            "s3KeyPrefix": _prefix(s),
            "s3EncryptionEnabled": bool(s.s3_bucket),
            # Streamed while the session runs, as JSON events (sessionData lines), one log stream per session.
            # With a KMS key, the agent also insists that the log group be encrypted with one.
            "cloudWatchLogGroupName": s.cloudwatch_log_group,
            "cloudWatchStreamingEnabled": bool(s.cloudwatch_log_group),
            "cloudWatchEncryptionEnabled": bool(s.cloudwatch_log_group and s.kms_key_id),
            "kmsKeyId": s.kms_key_id,
            # Run As on and no default user: the OS user comes only from the SSMSessionRunAs session tag,
            # and a session without the tag fails instead of starting as ssm-user.
            "runAsEnabled": True,
            "runAsDefaultUser": "",
            "idleSessionTimeout": str(idle),
            "maxSessionDuration": str(longest),
            "shellProfile": {"windows": "", "linux": SHELL_PROFILE_LINUX},
        },
    }
    return content, notes


class Command(BaseCommand):
    help = "Print (as JSON) the IAM OIDC provider, role trust policy, permissions policy and session document an SSM cluster needs."

    def add_arguments(self, parser):
        parser.add_argument("--cluster", required=True, metavar="TENANT/SLUG", help="the cluster, e.g. acme/hpc")
        parser.add_argument("--account-id", help="AWS account of the OIDC provider and resources (default: the role ARN's)")

    def handle(self, *args, cluster, account_id=None, **options):
        tenant_slug, sep, slug = cluster.partition("/")
        if not sep or not tenant_slug or not slug:
            raise CommandError("Give the cluster as TENANT/SLUG, e.g. --cluster acme/hpc.")
        found = Cluster.objects.select_related("tenant").filter(tenant__slug=tenant_slug, slug=slug).first()
        if found is None:
            raise CommandError(f"No cluster {slug!r} in tenant {tenant_slug!r}.")
        try:
            s = ssm_settings(found)
        except AwsError as exc:
            raise CommandError(str(exc)) from None
        if account_id is not None and not re.fullmatch(r"\d{12}", account_id):
            raise CommandError(f"--account-id must be 12 digits, got {account_id!r}.")
        account = account_id or s.account_id

        issuer = settings.AWS_ISSUER_URL
        warnings = []
        parts = urlsplit(issuer)
        if parts.scheme != "https":
            warnings.append(f"CLUSTERRA_ISSUER_URL is {issuer}: AWS only trusts an https issuer it can reach from the "
                            "internet. Set it to the portal's public https URL before creating the OIDC provider.")
        if parts.port:
            warnings.append("CLUSTERRA_ISSUER_URL has a port: IAM expects an OIDC provider URL without one.")
        if account != s.account_id:
            warnings.append(f"--account-id {account} differs from the role's account {s.account_id}: the role must be in "
                            "the account whose OIDC provider it trusts.")
        if s.token_source == "idp":  # noqa: S105 (a token source name)
            warnings.append("token_source is idp: replace the <IDP_...> placeholders in the trust policy with your identity "
                            f"provider's issuer, client id and the subjects of this tenant's users; its ID tokens must carry "
                            f"the {RUN_AS_TAG} session tag (docs/aws.md).")
        if not found.poll_posix_username:
            warnings.append("The cluster has no poll user, so the trust policy does not admit the job poller; run this "
                            "again after configuring polling.")
        if s.kms_key_id.startswith("alias/") or ":alias/" in s.kms_key_id:
            warnings.append("kms_key_id is an alias: put the key's ARN in the policy (IAM matches keys, not aliases).")
        if s.cloudwatch_log_group and s.kms_key_id:
            warnings.append(f"With kms_key_id set the session document asks for encrypted CloudWatch logs: the log group "
                            f"{s.cloudwatch_log_group} must be encrypted with a KMS key (aws logs associate-kms-key), or "
                            "Session Manager does not start sessions.")
        document, notes = session_document(found, s)
        warnings.extend(notes)

        output = {
            "cluster": f"{tenant_slug}/{slug}",
            "issuer": issuer,
            "oidc_provider": {
                "Url": issuer,
                "ClientIDList": [s.audience],
                "Arn": f"arn:{s.partition}:iam::{account}:oidc-provider/{provider_id(issuer)}",
                "ThumbprintList": [],
                "ThumbprintNote": ("Optional: when no thumbprint is given IAM retrieves the issuer's top intermediate CA "
                                   "thumbprint itself, and for issuers with certificates from public CAs AWS relies on "
                                   "its own trusted CA library. Give one only for a private CA."),
                "Discovery": f"{issuer}/.well-known/openid-configuration",
            },
            "role": {
                "RoleName": s.role_name,
                "Arn": s.role_arn,
                "MaxSessionDuration": max(3600, s.duration),
                "AssumeRolePolicyDocument": trust_policy(found, s, account, issuer),
            },
            "permissions_policy": {
                "PolicyName": f"Clusterra-{tenant_slug}-{slug}",
                "PolicyDocument": permissions_policy(s, account),
            },
            "session_document": {
                "Name": s.document_name,
                "DocumentType": "Session",
                "DocumentFormat": "JSON",
                "Content": document,
            },
            "backend_settings": {k: v for k, v in found.backend_settings.items()},
            "warnings": warnings,
        }
        for warning in warnings:
            self.stderr.write(f"warning: {warning}")
        self.stdout.write(json.dumps(output, indent=2))
