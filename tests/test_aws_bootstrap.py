"""`manage.py aws_bootstrap`: the IAM and SSM artefacts for an SSM cluster, checked field by field.

The documents are also handed to moto's IAM and SSM, which parse them (moto does not evaluate IAM
policies the way AWS does, so this only shows they are well-formed).
"""

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from moto import mock_aws

from clusters.models import Cluster
from clusters.services import configure_polling, ensure_cluster

pytestmark = pytest.mark.django_db

ISSUER = "https://portal.example.test"
REGION = "eu-west-1"
ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/ClusterraShell"
INSTANCE = "i-0123456789abcdef0"
INSTANCE_ARN = f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/{INSTANCE}"
DOCUMENT_ARN = f"arn:aws:ssm:{REGION}:{ACCOUNT}:document/Clusterra-Shell"


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.AWS_ISSUER_URL = ISSUER
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def cluster(cast):
    return ensure_cluster(tenant=cast.acme, slug="aws", name="Acme on AWS", backend="ssm",
                          backend_settings={"region": REGION, "instance_id": INSTANCE, "role_arn": ROLE,
                                            "s3_bucket": "acme-ssm-logs", "s3_prefix": "hpc/", "kms_key_id": "1234abcd-12ab-34cd-56ef-1234567890ab"})


def bootstrap(*args) -> tuple[dict, str]:
    out, err = StringIO(), StringIO()
    call_command("aws_bootstrap", *args, stdout=out, stderr=err)
    return json.loads(out.getvalue()), err.getvalue()


def statement(policy: dict, sid: str) -> dict:
    [found] = [s for s in policy["Statement"] if s.get("Sid") == sid]
    return found


def test_oidc_provider_and_trust_policy(cluster, cast):
    configure_polling(cluster, posix_username="slurmpoll", uid=5050)
    out, err = bootstrap("--cluster", "acme/aws")
    assert out["cluster"] == "acme/aws" and out["issuer"] == ISSUER
    provider = out["oidc_provider"]
    assert provider["Url"] == ISSUER and provider["ClientIDList"] == ["sts.amazonaws.com"]
    assert provider["Arn"] == f"arn:aws:iam::{ACCOUNT}:oidc-provider/portal.example.test"
    assert provider["ThumbprintList"] == [] and "thumbprint" in provider["ThumbprintNote"].lower()
    assert provider["Discovery"] == f"{ISSUER}/.well-known/openid-configuration"

    role = out["role"]
    assert role["RoleName"] == "ClusterraShell" and role["Arn"] == ROLE and role["MaxSessionDuration"] >= 3600
    trust = role["AssumeRolePolicyDocument"]
    assert trust["Version"] == "2012-10-17"
    [portal] = trust["Statement"]
    assert portal["Effect"] == "Allow"
    assert portal["Principal"] == {"Federated": f"arn:aws:iam::{ACCOUNT}:oidc-provider/portal.example.test"}
    assert sorted(portal["Action"]) == ["sts:AssumeRoleWithWebIdentity", "sts:TagSession"]
    assert portal["Condition"]["StringEquals"] == {"portal.example.test:aud": "sts.amazonaws.com"}
    assert portal["Condition"]["StringLike"] == {
        "portal.example.test:sub": [f"tenant-{cast.acme.pk}-user-*", f"cluster-{cluster.pk}-poller",
                                                  f"cluster-{cluster.pk}-provisioner", f"cluster-{cluster.pk}-auditor"]}
    assert out["warnings"] == [] and err == ""


def test_least_privilege_permissions_policy(cluster):
    out, _ = bootstrap("--cluster", "acme/aws")
    assert out["permissions_policy"]["PolicyName"] == "Clusterra-acme-aws"
    policy = out["permissions_policy"]["PolicyDocument"]
    assert policy["Version"] == "2012-10-17"

    start = statement(policy, "StartShellOnThisInstanceWithThisDocument")
    assert start["Action"] == ["ssm:StartSession"]
    assert start["Resource"] == [INSTANCE_ARN, DOCUMENT_ARN]
    assert start["Condition"] == {"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "true"}}

    own = statement(policy, "EndOrResumeOwnSessions")
    assert sorted(own["Action"]) == ["ssm:ResumeSession", "ssm:TerminateSession"]
    assert own["Resource"] == [f"arn:aws:ssm:{REGION}:{ACCOUNT}:session/*"]
    assert own["Condition"] == {"StringLike": {"ssm:resourceTag/aws:ssmmessages:session-id": ["${aws:userid}"]}}

    channel = statement(policy, "OpenOwnDataChannels")
    assert channel["Action"] == ["ssmmessages:OpenDataChannel"]
    assert channel["Resource"] == [f"arn:aws:ssm:{REGION}:{ACCOUNT}:session/${{aws:userid}}-*"]

    send = statement(policy, "RunCommandsOnThisInstance")
    assert send["Action"] == ["ssm:SendCommand"]
    assert send["Resource"] == [INSTANCE_ARN, f"arn:aws:ssm:{REGION}::document/AWS-RunShellScript"]
    assert sorted(statement(policy, "ReadOrCancelCommands")["Action"]) == ["ssm:CancelCommand", "ssm:GetCommandInvocation"]

    kms = statement(policy, "SessionEncryptionKey")
    assert kms["Action"] == ["kms:GenerateDataKey"]
    assert kms["Resource"] == [f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"]
    assert statement(policy, "ReadSessionLogsAndCommandOutput")["Resource"] == ["arn:aws:s3:::acme-ssm-logs/hpc/*"]
    listing = statement(policy, "ListSessionLogsAndCommandOutput")
    assert listing["Resource"] == ["arn:aws:s3:::acme-ssm-logs"] and listing["Condition"] == {"StringLike": {"s3:prefix": ["hpc/*"]}}

    # Nothing beyond these: no wildcard actions; "*" only where the API has no resource-level permissions.
    for s in policy["Statement"]:
        assert s["Effect"] == "Allow" and all("*" not in action for action in s["Action"])
        if s["Sid"] != "ReadOrCancelCommands":
            assert "*" not in s["Resource"]


def test_policy_without_kms_or_s3(cast):
    ensure_cluster(tenant=cast.acme, slug="plain", name="Plain", backend="ssm",
                   backend_settings={"region": REGION, "instance_id": "mi-0123456789abcdef0", "role_arn": ROLE})
    out, _ = bootstrap("--cluster", "acme/plain")
    sids = [s["Sid"] for s in out["permissions_policy"]["PolicyDocument"]["Statement"]]
    assert sids == ["StartShellOnThisInstanceWithThisDocument", "EndOrResumeOwnSessions", "OpenOwnDataChannels",
                    "RunCommandsOnThisInstance", "ReadOrCancelCommands"]
    start = statement(out["permissions_policy"]["PolicyDocument"], "StartShellOnThisInstanceWithThisDocument")
    assert start["Resource"][0] == f"arn:aws:ssm:{REGION}:{ACCOUNT}:managed-instance/mi-0123456789abcdef0"
    inputs = out["session_document"]["Content"]["inputs"]
    assert inputs["s3BucketName"] == "" and inputs["s3EncryptionEnabled"] is False and inputs["kmsKeyId"] == ""


def test_session_document(cluster):
    out, _ = bootstrap("--cluster", "acme/aws")
    doc = out["session_document"]
    assert (doc["Name"], doc["DocumentType"], doc["DocumentFormat"]) == ("Clusterra-Shell", "Session", "JSON")
    content = doc["Content"]
    assert content["schemaVersion"] == "1.0" and content["sessionType"] == "Standard_Stream"
    inputs = content["inputs"]
    assert inputs["s3BucketName"] == "acme-ssm-logs" and inputs["s3KeyPrefix"] == "hpc"
    assert inputs["s3EncryptionEnabled"] is True
    assert inputs["kmsKeyId"] == "1234abcd-12ab-34cd-56ef-1234567890ab"
    assert inputs["runAsEnabled"] is True and inputs["runAsDefaultUser"] == ""
    assert inputs["idleSessionTimeout"] == "20" and inputs["maxSessionDuration"] == "720"  # 20 min, 12 h
    assert inputs["shellProfile"]["linux"] and inputs["shellProfile"]["windows"] == ""
    assert inputs["cloudWatchLogGroupName"] == "" and inputs["cloudWatchEncryptionEnabled"] is False
    assert inputs["cloudWatchStreamingEnabled"] is False


def test_cloudwatch_streaming_in_the_document_the_policy_and_the_trust(cast):
    """A log group alone (no bucket) is enough for the auditor: it reads the session streams back."""
    cluster = ensure_cluster(tenant=cast.acme, slug="cw", name="Streamed", backend="ssm", backend_settings={
        "region": REGION, "instance_id": INSTANCE, "role_arn": ROLE, "cloudwatch_log_group": "/clusterra/acme/sessions"})
    out, err = bootstrap("--cluster", "acme/cw")
    inputs = out["session_document"]["Content"]["inputs"]
    assert inputs["cloudWatchLogGroupName"] == "/clusterra/acme/sessions"
    assert inputs["cloudWatchStreamingEnabled"] is True and inputs["cloudWatchEncryptionEnabled"] is False
    assert inputs["s3BucketName"] == "" and inputs["s3EncryptionEnabled"] is False
    policy = out["permissions_policy"]["PolicyDocument"]
    streams = statement(policy, "ReadSessionLogStreams")
    group = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/clusterra/acme/sessions"
    assert streams["Action"] == ["logs:DescribeLogStreams", "logs:GetLogEvents"]
    assert streams["Resource"] == [group, f"{group}:*"]
    assert not [s for s in policy["Statement"] if s["Sid"].startswith(("ReadSessionLogsAnd", "ListSessionLogs"))]
    [portal] = out["role"]["AssumeRolePolicyDocument"]["Statement"]
    assert f"cluster-{cluster.pk}-auditor" in portal["Condition"]["StringLike"]["portal.example.test:sub"]
    assert "encrypted" not in err

    # With a KMS key the document asks for an encrypted log group, and the command says what that takes.
    cluster.backend_settings = {**cluster.backend_settings, "kms_key_id": "1234abcd-12ab-34cd-56ef-1234567890ab"}
    cluster.save()
    out, err = bootstrap("--cluster", "acme/cw")
    assert out["session_document"]["Content"]["inputs"]["cloudWatchEncryptionEnabled"] is True
    assert "/clusterra/acme/sessions must be encrypted with a KMS key" in err
    assert any("associate-kms-key" in warning for warning in out["warnings"])

    with mock_aws():  # moto parses both documents
        import boto3

        boto3.client("iam", region_name=REGION).create_policy(PolicyName="check", PolicyDocument=json.dumps(policy))
        doc = out["session_document"]
        ssm = boto3.client("ssm", region_name=REGION)
        ssm.create_document(Name=doc["Name"], Content=json.dumps(doc["Content"]), DocumentType=doc["DocumentType"],
                            DocumentFormat=doc["DocumentFormat"])
        assert json.loads(ssm.get_document(Name=doc["Name"])["Content"])["inputs"]["cloudWatchStreamingEnabled"] is True


@pytest.mark.parametrize("name", ["has space", "a:b", "x" * 513, "star*"])
def test_a_bad_log_group_name_is_refused_by_name(cluster, name):
    cluster.backend_settings = {**cluster.backend_settings, "cloudwatch_log_group": name}
    cluster.save()
    with pytest.raises(CommandError, match="'cloudwatch_log_group' must be a CloudWatch Logs log group name"):
        bootstrap("--cluster", "acme/aws")


@pytest.mark.parametrize("idle, longest, want_idle, want_max, clamped", [
    (30, 90, "1", "2", False),  # rounded up: AWS never ends a session before the portal would
    (7200, 100000, "60", "1440", True),
    (3600, 86400, "60", "1440", False),
])
def test_session_timeouts_in_minutes_clamped(cluster, idle, longest, want_idle, want_max, clamped):
    cluster.idle_timeout, cluster.max_session_duration = idle, longest
    cluster.save()
    out, err = bootstrap("--cluster", "acme/aws")
    inputs = out["session_document"]["Content"]["inputs"]
    assert (inputs["idleSessionTimeout"], inputs["maxSessionDuration"]) == (want_idle, want_max)
    assert ("clamped" in err) is clamped


def test_account_id_override_and_warnings(cluster, settings):
    settings.AWS_ISSUER_URL = "http://127.0.0.1:8000"
    out, err = bootstrap("--cluster", "acme/aws", "--account-id", "210987654321")
    assert out["oidc_provider"]["Arn"] == "arn:aws:iam::210987654321:oidc-provider/127.0.0.1:8000"
    start = statement(out["permissions_policy"]["PolicyDocument"], "StartShellOnThisInstanceWithThisDocument")
    assert start["Resource"][0] == f"arn:aws:ec2:{REGION}:210987654321:instance/{INSTANCE}"
    assert "https" in err and "port" in err and "differs from the role's account" in err
    assert len(out["warnings"]) >= 3


def test_idp_token_source_leaves_placeholders_and_keeps_the_poller_the_provisioner_and_the_auditor(cluster):
    configure_polling(cluster, posix_username="slurmpoll", uid=5050)
    cluster.backend_settings = {**cluster.backend_settings, "token_source": "idp"}
    cluster.save()
    out, err = bootstrap("--cluster", "acme/aws")
    portal, idp = out["role"]["AssumeRolePolicyDocument"]["Statement"]
    assert portal["Condition"]["StringLike"] == {"portal.example.test:sub": [f"cluster-{cluster.pk}-poller",
                                                                            f"cluster-{cluster.pk}-provisioner",
                                                                            f"cluster-{cluster.pk}-auditor"]}
    assert "<IDP_ISSUER_HOST_AND_PATH>" in idp["Principal"]["Federated"] and "sts:TagSession" in idp["Action"]
    assert "placeholders" in err


@pytest.mark.parametrize("args, message", [
    (["--cluster", "acme"], "TENANT/SLUG"),
    (["--cluster", "acme/nope"], "No cluster 'nope'"),
    (["--cluster", "acme/hpc"], "does not use the SSM backend"),
    (["--cluster", "acme/aws", "--account-id", "12"], "12 digits"),
])
def test_errors(cluster, args, message):
    with pytest.raises(CommandError, match=message):
        bootstrap(*args)


def test_bad_settings_name_the_key(cluster):
    cluster.backend_settings = {**cluster.backend_settings, "instance_id": "i-nope"}
    cluster.save()
    with pytest.raises(CommandError, match="'instance_id'"):
        bootstrap("--cluster", "acme/aws")


def test_other_tenants_cluster_is_addressed_by_its_own_tenant(cast):
    ensure_cluster(tenant=cast.other, slug="aws", name="Other on AWS", backend="ssm",
                   backend_settings={"region": REGION, "instance_id": INSTANCE, "role_arn": ROLE})
    out, _ = bootstrap("--cluster", "other/aws")
    [portal] = out["role"]["AssumeRolePolicyDocument"]["Statement"]
    cluster = Cluster.objects.get(tenant=cast.other, slug="aws")
    # No bucket, no session logs to fetch: no auditor subject.
    assert portal["Condition"]["StringLike"]["portal.example.test:sub"] == [f"tenant-{cast.other.pk}-user-*",
                                                                          f"cluster-{cluster.pk}-provisioner"]


def test_moto_accepts_the_documents(cluster):
    """moto parses them (IAM policy grammar, SSM document JSON); it does not enforce them like AWS."""
    import boto3

    out, _ = bootstrap("--cluster", "acme/aws")
    with mock_aws():
        iam = boto3.client("iam", region_name=REGION)
        provider = iam.create_open_id_connect_provider(Url=out["oidc_provider"]["Url"],
                                                      ClientIDList=out["oidc_provider"]["ClientIDList"])
        assert provider["OpenIDConnectProviderArn"] == out["oidc_provider"]["Arn"]
        iam.create_role(RoleName=out["role"]["RoleName"],
                        AssumeRolePolicyDocument=json.dumps(out["role"]["AssumeRolePolicyDocument"]))
        iam.put_role_policy(RoleName=out["role"]["RoleName"], PolicyName=out["permissions_policy"]["PolicyName"],
                            PolicyDocument=json.dumps(out["permissions_policy"]["PolicyDocument"]))
        iam.create_policy(PolicyName="check", PolicyDocument=json.dumps(out["permissions_policy"]["PolicyDocument"]))
        ssm = boto3.client("ssm", region_name=REGION)
        doc = out["session_document"]
        ssm.create_document(Name=doc["Name"], Content=json.dumps(doc["Content"]), DocumentType=doc["DocumentType"],
                            DocumentFormat=doc["DocumentFormat"])
        stored = ssm.get_document(Name=doc["Name"])
        assert json.loads(stored["Content"]) == doc["Content"] and stored["DocumentType"] == "Session"
