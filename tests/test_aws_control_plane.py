"""The AWS control-plane stand-in (tests/aws_control_plane.py), and a real daphne running SSM sessions on it.

The first group checks that the stand-in is as strict as AWS where the portal depends on it: STS only
accepts a web-identity token whose signature verifies against the portal's published JWKS, with the
right issuer, audience and lifetime; SSM only accepts SigV4 requests signed with credentials STS issued,
and sessions belong to whoever started them. The last test runs the whole path in separate processes:
a websocket client ↔ daphne (the portal, with its own STS and SSM calls) ↔ the stand-in ↔ the emulator
↔ a real login shell as the mapped POSIX user.
"""

import asyncio
import json
import os
import time

import botocore.session
import jwt
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives.asymmetric import rsa

from accounts import issuer
from clusters import aws
from clusters.models import Cluster, ClusterAccount
from terminal import protocol
from terminal.backends.local_pty import session_pids
from terminal.ssm.channel import DataChannel
from tests.aws_control_plane import AwsControlPlane, Role
from tests.conftest import _free_port, run_daphne, wait_for
from tests.ssm_emulator import DEFAULT_TARGET, run_in_thread
from tests.terminal_client import signed_in_cookie, ws_terminal

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/clusterra-hpc"
DOCUMENT = "Clusterra-Shell-acme-hpc"
AUDIENCE = "sts.amazonaws.com"


def ssm_settings(plane: AwsControlPlane, **extra) -> dict:
    return {"region": REGION, "instance_id": DEFAULT_TARGET, "role_arn": ROLE, "document_name": DOCUMENT,
            "endpoint_url": plane.url, "sts_endpoint_url": plane.url, **extra}


def make_plane(emu, issuer_url: str) -> AwsControlPlane:
    return AwsControlPlane(emu, issuer=issuer_url, region=REGION,
                           roles={ROLE: Role(subject_like="tenant-*-user-*", max_session_duration=3600)},
                           documents=(DOCUMENT,))


@pytest.fixture
def emulator():
    with run_in_thread() as emu:
        yield emu
    assert emu.emulator.violations == []


@pytest.fixture
def portal_issuer(live_server, settings):
    """The portal serves /.well-known/* (Django's live server thread) and signs tokens as that issuer."""
    settings.AWS_ISSUER_URL = live_server.url
    return live_server.url


@pytest.fixture
def plane(emulator, portal_issuer):
    with make_plane(emulator, portal_issuer) as cp:
        yield cp


def sts_client(plane):
    return botocore.session.get_session().create_client(
        "sts", region_name=REGION, endpoint_url=plane.url,
        config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1}))


def ssm_client(plane, creds: dict, **overrides):
    keys = {"aws_access_key_id": creds["AccessKeyId"], "aws_secret_access_key": creds["SecretAccessKey"],
            "aws_session_token": creds["SessionToken"], **overrides}
    return botocore.session.get_session().create_client(
        "ssm", region_name=REGION, endpoint_url=plane.url, config=Config(retries={"max_attempts": 1}), **keys)


def subject_of(cast, user) -> str:
    return issuer.user_subject(user, cast.acme)


def portal_token(cast, user=None, **overrides) -> str:
    user = user or cast.bob
    kwargs = {"subject": subject_of(cast, user), "email": user.email, "run_as": cast.posix.pw_name, "audience": AUDIENCE}
    return issuer.mint_aws_token(**{**kwargs, **overrides})


def signed_with_portal_key(claims: dict, **header) -> str:
    key, private_key = issuer.active_signing_key()
    return jwt.encode(claims, private_key, algorithm="RS256", headers={"kid": key.kid, **header})


def claims_for(cast, **changes) -> dict:
    now = int(time.time())
    claims = {"iss": issuer.settings.AWS_ISSUER_URL, "sub": subject_of(cast, cast.bob), "aud": AUDIENCE,
              "iat": now, "nbf": now - 30, "exp": now + 300,
              issuer.AWS_TAGS_CLAIM: issuer.session_tags_claim({issuer.RUN_AS_TAG: cast.posix.pw_name}, ["SSMSessionRunAs"])}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def assume(plane, token: str, session_name: str = "tenant-1-user-2", **kwargs) -> dict:
    return sts_client(plane).assume_role_with_web_identity(
        RoleArn=kwargs.pop("role", ROLE), RoleSessionName=session_name, WebIdentityToken=token,
        DurationSeconds=kwargs.pop("duration", 3600))


def error_of(call) -> tuple[str, str, int]:
    with pytest.raises(ClientError) as info:
        call()
    error = info.value.response["Error"]
    return error["Code"], error.get("Message", ""), info.value.response["ResponseMetadata"]["HTTPStatusCode"]


# --- STS ------------------------------------------------------------------------------------------
def test_the_portals_real_token_is_accepted_with_the_real_response_shape(cast, plane):
    subject = subject_of(cast, cast.bob)
    response = assume(plane, portal_token(cast), subject)
    creds = response["Credentials"]
    assert creds["AccessKeyId"].startswith("ASIA") and len(creds["SecretAccessKey"]) == 40 and creds["SessionToken"]
    assert creds["Expiration"].timestamp() == pytest.approx(time.time() + 3600, abs=5)
    assert response["SubjectFromWebIdentityToken"] == subject
    assert response["Audience"] == AUDIENCE and response["Provider"] == plane.issuer
    user = response["AssumedRoleUser"]
    assert user["Arn"] == f"arn:aws:sts::123456789012:assumed-role/clusterra-hpc/{subject}"
    assert user["AssumedRoleId"].startswith("AROA") and user["AssumedRoleId"].endswith(f":{subject}")
    (call,) = plane.calls
    assert call["operation"] == "AssumeRoleWithWebIdentity" and call["outcome"] == "ok"
    assert call["caller"] == f"web-identity:{subject}" and call["run_as"] == cast.posix.pw_name
    assert "WebIdentityToken" not in call["params"] and call["params"]["RoleSessionName"] == subject
    assert plane.jwks_fetches == 1  # discovery document, then its jwks_uri


def test_a_forged_token_is_refused(cast, plane):
    issuer.active_signing_key()  # the portal's key exists and is published
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = issuer.active_signing_key()[0].kid
    forged = jwt.encode(claims_for(cast), forger, algorithm="RS256", headers={"kid": kid})  # the portal's kid, not its key
    code, message, status = error_of(lambda: assume(plane, forged))
    assert (code, status) == ("InvalidIdentityToken", 400) and "signature" in message
    unknown_kid = jwt.encode(claims_for(cast), forger, algorithm="RS256", headers={"kid": "not-published"})
    assert error_of(lambda: assume(plane, unknown_kid))[0] == "InvalidIdentityToken"
    hmac_token = jwt.encode(claims_for(cast), "a shared secret of some length!!", algorithm="HS256")
    assert error_of(lambda: assume(plane, hmac_token))[0] == "InvalidIdentityToken"
    unsigned = jwt.encode(claims_for(cast), None, algorithm="none")
    assert error_of(lambda: assume(plane, unsigned))[0] == "InvalidIdentityToken"
    assert error_of(lambda: assume(plane, "not-a-jwt"))[0] == "InvalidIdentityToken"
    assert [c["outcome"] for c in plane.calls] == ["InvalidIdentityToken"] * 5
    assert not plane.issued


def test_an_expired_token_is_refused(cast, plane):
    past = int(time.time()) - 3600
    token = signed_with_portal_key(claims_for(cast, iat=past - 300, nbf=past - 330, exp=past))
    code, message, status = error_of(lambda: assume(plane, token))
    assert (code, status) == ("ExpiredTokenException", 400) and "expired" in message.lower()
    future = int(time.time()) + 600
    not_yet = signed_with_portal_key(claims_for(cast, nbf=future, exp=future + 300))
    assert error_of(lambda: assume(plane, not_yet))[0] == "InvalidIdentityToken"
    # The portal's own message for it names the cause.
    assert "expired" in str(aws.describe_client_error(ClientError(
        {"Error": {"Code": code, "Message": message}}, "AssumeRoleWithWebIdentity"), "AssumeRoleWithWebIdentity")).lower()


def test_wrong_audience_issuer_or_subject_is_refused(cast, plane):
    code, message, _ = error_of(lambda: assume(plane, portal_token(cast, audience="sts.amazon.com")))
    assert (code, message) == ("InvalidIdentityToken", "Incorrect token audience")
    other = signed_with_portal_key(claims_for(cast, iss="https://elsewhere.example"))
    code, message, _ = error_of(lambda: assume(plane, other))
    assert code == "InvalidIdentityToken" and "No OpenIDConnect provider" in message
    # The role trusts this tenant's users only (StringLike on sub), and unknown roles not at all.
    robot = signed_with_portal_key(claims_for(cast, sub="cluster-7-poller"))
    code, _, status = error_of(lambda: assume(plane, robot))
    assert (code, status) == ("AccessDenied", 403)
    assert error_of(lambda: assume(plane, portal_token(cast), role="arn:aws:iam::123456789012:role/other"))[0] == "AccessDenied"
    assert error_of(lambda: assume(plane, portal_token(cast), duration=7200))[0] == "ValidationError"
    assert error_of(lambda: assume(plane, portal_token(cast), session_name="has space"))[0] == "ValidationError"
    bad_tags = signed_with_portal_key(claims_for(cast, **{issuer.AWS_TAGS_CLAIM: {"principal_tags": {"aws:x": ["y"]}}}))
    assert error_of(lambda: assume(plane, bad_tags))[0] == "InvalidIdentityToken"
    assert not plane.issued


def test_a_revoked_subject_is_rejected_by_the_provider(cast, plane):
    plane.rejected_claims.add(subject_of(cast, cast.bob))
    code, _, status = error_of(lambda: assume(plane, portal_token(cast)))
    assert (code, status) == ("IDPRejectedClaim", 403)
    assert assume(plane, portal_token(cast, cast.alice), subject_of(cast, cast.alice))["Credentials"]


def test_an_issuer_that_cannot_be_reached(cast, emulator, settings):
    settings.AWS_ISSUER_URL = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    with AwsControlPlane(emulator, issuer=None, region=REGION) as cp:  # discovery from the token's iss
        code, message, _ = error_of(lambda: assume(cp, portal_token(cast)))
    assert code == "IDPCommunicationError"


# --- SSM ------------------------------------------------------------------------------------------
def test_ssm_calls_need_sigv4_with_issued_unexpired_credentials(cast, plane):
    creds = assume(plane, portal_token(cast), subject_of(cast, cast.bob))["Credentials"]
    start = {"Target": DEFAULT_TARGET, "DocumentName": DOCUMENT}
    wrong_secret = ssm_client(plane, creds, aws_secret_access_key="x" * 40)
    assert error_of(lambda: wrong_secret.start_session(**start))[0] == "InvalidSignatureException"
    unknown = ssm_client(plane, creds, aws_access_key_id="ASIAUNKNOWNUNKNOWN00")
    assert error_of(lambda: unknown.start_session(**start))[0] == "UnrecognizedClientException"
    no_token = ssm_client(plane, creds, aws_session_token=None)
    assert error_of(lambda: no_token.start_session(**start))[0] == "UnrecognizedClientException"
    other_region = botocore.session.get_session().create_client(
        "ssm", region_name="eu-west-1", endpoint_url=plane.url, config=Config(retries={"max_attempts": 1}),
        aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"])
    assert error_of(lambda: other_region.start_session(**start))[0] == "InvalidSignatureException"
    good = ssm_client(plane, creds)
    assert error_of(lambda: good.start_session(Target="i-0fffffffffffffff0", DocumentName=DOCUMENT))[0] == "TargetNotConnected"
    assert error_of(lambda: good.start_session(Target=DEFAULT_TARGET, DocumentName="AWS-StartSSHSession"))[0] == "InvalidDocument"
    assert error_of(lambda: good.start_session(Target=DEFAULT_TARGET))[0] == "InvalidDocument"  # the default document
    plane.expire_credentials(creds["AccessKeyId"])
    code, message, _ = error_of(lambda: good.start_session(**start))
    assert code == "ExpiredTokenException"
    assert plane.sessions == {} and plane.emulator.sessions == {}
    assert [c["outcome"] for c in plane.calls if c["service"] == "ssm"] == [
        "InvalidSignatureException", "UnrecognizedClientException", "UnrecognizedClientException",
        "InvalidSignatureException", "TargetNotConnected", "InvalidDocument", "InvalidDocument", "ExpiredTokenException"]


def test_sessions_run_as_the_tagged_user_and_belong_to_their_owner(cast, plane, emulator):
    bob = assume(plane, portal_token(cast), subject_of(cast, cast.bob))["Credentials"]
    alice = assume(plane, portal_token(cast, cast.alice), subject_of(cast, cast.alice))["Credentials"]
    bob_ssm, alice_ssm = ssm_client(plane, bob), ssm_client(plane, alice)
    started = bob_ssm.start_session(Target=DEFAULT_TARGET, DocumentName=DOCUMENT, Reason="test")
    sid = started["SessionId"]
    assert sid.startswith(subject_of(cast, cast.bob) + "-") and len(sid.rsplit("-", 1)[1]) == 17
    assert started["StreamUrl"] == emulator.emulator.url_for(sid) and started["TokenValue"]
    assert emulator.emulator.sessions[sid].argv == ("runuser", "-u", cast.posix.pw_name, "--", "/bin/bash", "--login") \
        if os.geteuid() == 0 else ("/bin/bash", "--login")
    call = plane.calls[-1]
    assert call["run_as"] == cast.posix.pw_name and call["caller"].endswith(f"/{subject_of(cast, cast.bob)}")
    assert "TokenValue" not in json.dumps(plane.calls)

    # Another person's session: neither resumable nor terminable by them.
    assert error_of(lambda: alice_ssm.resume_session(SessionId=sid))[0] == "AccessDeniedException"
    assert error_of(lambda: alice_ssm.terminate_session(SessionId=sid))[0] == "AccessDeniedException"
    resumed = bob_ssm.resume_session(SessionId=sid)
    assert resumed["SessionId"] == sid and resumed["TokenValue"] not in (started["TokenValue"], "")

    # TerminateSession ends the session on the emulator and kills its shell, while a data channel is open on it
    # (the portal's own client); it is idempotent.
    async def run_then_terminate():
        output, closed = bytearray(), asyncio.Event()
        channel = DataChannel(resumed["StreamUrl"], resumed["TokenValue"], session_id=sid, target=DEFAULT_TARGET,
                              on_output=output.extend, on_closed=lambda reason: closed.set())
        await channel.open()
        channel.send_input(b"echo shell-$((3*4)); sleep 60\r")
        for _ in range(200):
            if b"shell-12" in output:
                break
            await asyncio.sleep(0.05)
        shell_pid = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_shell_pid(emulator.emulator, sid), emulator.loop))
        assert session_pids(shell_pid), "no shell running"
        assert (await asyncio.to_thread(bob_ssm.terminate_session, SessionId=sid))["SessionId"] == sid
        await asyncio.wait_for(closed.wait(), 10)
        await channel.close()
        return bytes(output), shell_pid

    output, shell_pid = asyncio.run(run_then_terminate())
    assert b"shell-12" in output
    assert emulator.emulator.sessions[sid].ended
    wait_for(lambda: session_pids(shell_pid) == [], 10, "the terminated session's shell to be gone")  # killed as it ends
    assert bob_ssm.terminate_session(SessionId=sid)["SessionId"] == sid
    assert error_of(lambda: bob_ssm.resume_session(SessionId=sid))[0] == "DoesNotExistException"
    ops = [(c["operation"], c["outcome"]) for c in plane.calls if c["service"] == "ssm"]
    assert ops == [("StartSession", "ok"), ("ResumeSession", "AccessDeniedException"),
                   ("TerminateSession", "AccessDeniedException"), ("ResumeSession", "ok"), ("TerminateSession", "ok"),
                   ("TerminateSession", "ok"), ("ResumeSession", "DoesNotExistException")]


def test_without_a_run_as_tag_the_session_says_so_and_ends(cast, plane, emulator):
    untagged = signed_with_portal_key(claims_for(cast, **{issuer.AWS_TAGS_CLAIM: None}))
    creds = assume(plane, untagged, subject_of(cast, cast.bob))["Credentials"]
    started = ssm_client(plane, creds).start_session(Target=DEFAULT_TARGET, DocumentName=DOCUMENT)
    argv = emulator.emulator.sessions[started["SessionId"]].argv
    assert argv[0] == "/bin/sh" and "SSMSessionRunAs" in argv[-1] and "runuser" not in argv
    assert plane.calls[-1]["run_as"] is None


def test_the_portals_own_aws_code_gets_credentials_and_a_session(cast, plane, emulator):
    """clusters.aws (the code daphne runs) against the stand-in, in this process."""
    Cluster.objects.filter(pk=cast.hpc.pk).update(backend="ssm", backend_settings=ssm_settings(plane))
    account = ClusterAccount.objects.select_related("cluster__tenant", "user").get(cluster=cast.hpc, user=cast.bob)
    aws.forget_credentials()
    try:
        client = aws.account_client(account, "ssm")
        started = client.start_session(Target=DEFAULT_TARGET, DocumentName=DOCUMENT)
        client.terminate_session(SessionId=started["SessionId"])
    finally:
        aws.forget_credentials()
    assert [(c["service"], c["operation"], c["outcome"]) for c in plane.calls] == [
        ("sts", "AssumeRoleWithWebIdentity", "ok"), ("ssm", "StartSession", "ok"), ("ssm", "TerminateSession", "ok")]
    assert plane.calls[1]["run_as"] == cast.posix.pw_name


# --- a real daphne ------------------------------------------------------------------------------
@pytest.fixture
def issuer_daphne(transactional_db, tmp_path, settings):
    """conftest's daphne (its own URL is the issuer, so the stand-in fetches the JWKS from the portal that
    signs the tokens, as AWS does from the public issuer URL), with one attempt per AWS call."""
    with run_daphne(tmp_path, settings, {"CLUSTERRA_AWS_MAX_ATTEMPTS": "1"}) as server:
        yield server


def test_live_daphne_runs_an_ssm_session_through_the_stand_in(cast, issuer_daphne, emulator):
    with make_plane(emulator, issuer_daphne) as plane:
        Cluster.objects.filter(pk=cast.hpc.pk).update(backend="ssm", backend_settings=ssm_settings(plane))
        cookie = signed_in_cookie(cast.bob)

        async def session():
            async with ws_terminal(issuer_daphne, cookie, "/ws/t/acme/c/hpc/terminal/?cols=100&rows=30") as term:
                ws = term.ws
                assert term.connected["backend"] == "ssm"
                (sid,) = plane.sessions
                shell_pid = emulator.call(_shell_pid(emulator.emulator, sid))
                await ws.send(protocol.encode_input(b"echo ssm-$((6*7)); whoami; stty size\r"))
                await term.output_has(b"ssm-42")
                await term.output_has(f"\n{cast.posix.pw_name}\r\n".encode())
                await term.output_has(b"30 100")
                await ws.send(protocol.encode_input(b"exit\r"))
                ended = await term.status("exit", timeout=20)
                return sid, shell_pid, ended

        sid, shell_pid, ended = asyncio.run(session())
        assert ended["reason"] == "closed", ended
        deadline = time.monotonic() + 15
        while "TerminateSession" not in plane.operations("ssm") and time.monotonic() < deadline:
            time.sleep(0.05)
        calls = [(c["service"], c["operation"], c["outcome"]) for c in plane.calls]
        assert calls == [("sts", "AssumeRoleWithWebIdentity", "ok"), ("ssm", "StartSession", "ok"),
                         ("ssm", "TerminateSession", "ok")], plane.calls
        start = plane.calls[1]
        subject = issuer.user_subject(cast.bob, cast.acme)
        assert start["run_as"] == cast.posix.pw_name and start["session_id"] == sid
        assert start["caller"] == f"arn:aws:sts::123456789012:assumed-role/clusterra-hpc/{subject}"
        assert start["params"]["Target"] == DEFAULT_TARGET and start["params"]["DocumentName"] == DOCUMENT
        assert plane.calls[2]["params"] == {"SessionId": sid}
        assert plane.jwks_fetches == 1  # from the daphne itself
        deadline = time.monotonic() + 5
        while session_pids(shell_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert session_pids(shell_pid) == [], "the shell outlived TerminateSession"
        log = issuer_daphne.log_path.read_text()
        secrets_handed_out = plane.secrets()
    assert secrets_handed_out and not any(s in log for s in secrets_handed_out)
    assert emulator.emulator.violations == []


async def _shell_pid(emu, sid):
    for _ in range(100):
        session = emu.sessions.get(sid)
        if session is not None and session.pid is not None:
            return session.pid
        await asyncio.sleep(0.05)
    raise AssertionError(f"no shell for {sid}")
