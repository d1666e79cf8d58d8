"""The write path for terminal sessions: open, attach, finish, revoke. Each writes its audit event.

Views, consumers, admin actions and (later) offboarding call these; nothing else saves
TerminalSession rows.
"""

import logging
import posixpath
import time
from datetime import timedelta

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db.models import F
from django.utils import timezone

from accounts.issuer import user_subject
from accounts.models import Tenant
from audit.services import record_event
from clusters import aws
from clusters.models import Cluster, ClusterAccount, CredentialRevocation
from terminal import recordings
from terminal.models import TerminalSession

logger = logging.getLogger(__name__)
MAX_PATH_LENGTH = 4096


class TerminalRefused(Exception):
    """The user may not open this session; the message is shown to them."""

    def __init__(self, message: str, *, not_found: bool = False):
        super().__init__(message)
        self.not_found = not_found


def user_group(user_id) -> str:
    return f"terminal.user.{user_id}"


def session_group(session_id) -> str:
    return f"terminal.session.{session_id}"


def clean_working_directory(raw: str | None) -> str | None:
    """An absolute, normalised path or None. Whether the user may enter it is the shell's business."""
    if raw is None or raw == "":
        return None
    if "\x00" in raw or len(raw) > MAX_PATH_LENGTH:
        raise TerminalRefused("The working directory is not a valid path.")
    if not raw.startswith("/"):
        raise TerminalRefused("The working directory must be an absolute path.")
    normalised = posixpath.normpath(raw)
    if normalised.startswith("//"):
        normalised = "/" + normalised.lstrip("/")
    if normalised != raw.rstrip("/") and raw != "/":
        raise TerminalRefused(f"The working directory must be a normalised path (did you mean {normalised}?).")
    return normalised


def check_mapping(account: ClusterAccount) -> None:
    """Never root, never a system uid — whatever the database says."""
    if account.posix_username == "root" or account.uid == 0 or account.uid < settings.TERMINAL_MIN_UID:
        raise TerminalRefused(
            f"Your account on this cluster maps to {account.posix_username!r} (uid {account.uid}), a system account: "
            "terminals are never opened for those. Ask a tenant admin to fix the mapping."
        )


def open_terminal_session(*, user, tenant_slug: str, cluster_slug: str, working_directory: str | None,
                          client_address: str | None, user_agent: str, owner_id=None) -> TerminalSession:
    """A new session row, held by the portal process `owner_id` (terminal/processes.py)."""
    cluster = (
        Cluster.objects.visible_to(user).select_related("tenant").filter(tenant__slug=tenant_slug, slug=cluster_slug).first()
    )
    if cluster is None:
        raise TerminalRefused("No such cluster.", not_found=True)
    account = ClusterAccount.objects.filter(cluster=cluster, user=user).first()
    if account is not None and account.state == ClusterAccount.State.PENDING:
        raise TerminalRefused(f"Your account on {cluster.name} is still being set up on the head node. Try again in a "
                              "minute; if it stays like this, a tenant admin sees why.")
    if account is None or account.state != ClusterAccount.State.ACTIVE:
        state = "no account" if account is None else f"a {account.state} account"
        raise TerminalRefused(f"You have {state} on {cluster.name}; a tenant admin can give you access.")
    check_mapping(account)
    account.cluster, account.user = cluster, user  # the same rows: no lazy queries later from async code
    cwd = clean_working_directory(working_directory)
    session = TerminalSession(
        user=user, cluster=cluster, account=account, posix_username=account.posix_username,
        backend=cluster.backend, working_directory=cwd or "", client_address=client_address,
        user_agent=(user_agent or "")[:512], owner_id=owner_id,
    )
    now = timezone.now()
    session.recording_path = f"{cluster.tenant.slug}/{now:%Y}/{now:%m}/{session.id}.cast"
    session.save()
    recordings.start_recording(session)
    record_event(
        "terminal.session.start", tenant=cluster.tenant, actor=user, target=session, client_address=client_address,
        data={"cluster": cluster.slug, "posix_user": account.posix_username, "working_directory": cwd or ""},
    )
    return session


def attach_backend_session(session: TerminalSession, backend_session_id: str) -> None:
    TerminalSession.objects.filter(pk=session.pk).update(backend_session_id=backend_session_id)
    session.backend_session_id = backend_session_id


def record_detach(session: TerminalSession, *, grace: int) -> None:
    """The browser went away (tab closed, connection dropped): the shell waits `grace` seconds for a reattach.

    Stored on the row so that session lists can say "detached, reattachable for …" instead of "live".
    """
    now = timezone.now()
    until = now + timedelta(seconds=grace)
    if not TerminalSession.objects.filter(pk=session.pk, ended_at__isnull=True).update(detached_at=now, reattach_until=until):
        return  # it ended meanwhile
    session.detached_at, session.reattach_until = now, until
    record_event("terminal.session.detach", tenant=session.cluster.tenant, actor=session.user, target=session,
                 data={"cluster": session.cluster.slug, "reattach_grace": grace})


def record_reattach(session: TerminalSession, *, client_address: str | None, took_over: bool = False) -> None:
    """A browser attached to a live session: after a dropped connection or a reload (reattach), or while
    another browser still had it, which is then disconnected (takeover)."""
    if session.detached_at is not None:
        TerminalSession.objects.filter(pk=session.pk).update(detached_at=None, reattach_until=None)
        session.detached_at = session.reattach_until = None
    record_event(
        "terminal.session.takeover" if took_over else "terminal.session.reattach", tenant=session.cluster.tenant,
        actor=session.user, target=session, client_address=client_address, data={"cluster": session.cluster.slug},
    )


def finish_terminal_session(session: TerminalSession, *, reason: str, message: str = "", exit_code: int | None = None,
                            bytes_in: int = 0, bytes_out: int = 0) -> bool:
    """Mark the session ended (once; later calls change nothing) and audit it."""
    updated = TerminalSession.objects.filter(pk=session.pk, ended_at__isnull=True).update(
        ended_at=timezone.now(), end_reason=reason, end_message=message[:500], exit_code=exit_code,
        bytes_in=F("bytes_in") + bytes_in, bytes_out=F("bytes_out") + bytes_out,
    )
    if updated:
        record_event(
            "terminal.session.end", tenant=session.cluster.tenant, actor=session.user, target=session,
            data={"reason": reason, "message": message, "exit_code": exit_code, "bytes_in": bytes_in, "bytes_out": bytes_out},
        )
        recordings.session_ended(session)  # to the recording store; an SSM session's S3 log is awaited
    return bool(updated)


def revoke_terminal_sessions(*, actor, user=None, session: TerminalSession | None = None, tenant=None, cluster=None,
                             message: str = "An administrator ended this session.") -> list[str]:
    """End every live session of `user` (or `session`) now, with reason `revoked`, in whichever process holds it.

    Durable first: the rows are marked, and each owning process checks for marked rows every second
    (terminal/processes.py). Then the fast path: a channel-layer message ends them within milliseconds;
    if the channel layer is down, that is logged and the durable path still ends them. Revoking a user
    also revokes their cached AWS credentials in every process. `tenant` or `cluster` narrow a user's
    revocation to the sessions there. Returns the ids of the sessions marked.
    """
    if (user is None) == (session is None):
        raise ValueError("Give exactly one of user or session")
    now = timezone.now()
    live = TerminalSession.objects.filter(ended_at__isnull=True, revoke_requested_at__isnull=True)
    live = live.filter(user=user) if user is not None else live.filter(pk=session.pk)
    if tenant is not None:
        live = live.filter(cluster__tenant=tenant)
    if cluster is not None:
        live = live.filter(cluster=cluster)
    session_ids = [str(pk) for pk in live.values_list("pk", flat=True)]
    TerminalSession.objects.filter(pk__in=session_ids).update(revoke_requested_at=now, revoke_message=message[:500])
    if user is not None:
        tenants = [tenant] if tenant is not None else Tenant.objects.filter(memberships__user=user)
        for each in tenants:
            subject = user_subject(user, each)
            CredentialRevocation.objects.update_or_create(subject=subject, defaults={"revoked_at": now})
            aws.forget_credentials(subject)  # here at once; the other processes within a second
    # A narrowed revocation signals each session; a whole person's, their group (one message).
    groups = [session_group(pk) for pk in session_ids] if (session is not None or tenant or cluster) else [user_group(user.pk)]
    layer = get_channel_layer()
    for group in groups:
        try:
            async_to_sync(layer.group_send)(group, {"type": "terminal.revoke", "message": message})
        except Exception as exc:  # Redis down: the owners still see the marked rows within a second
            logger.warning("revocation of %s: the channel layer is unavailable (%s); relying on the database check",
                           group, type(exc).__name__)
            break
    if session is not None:
        event_tenant, target = session.cluster.tenant, session
    else:
        event_tenant, target = (cluster.tenant if cluster is not None else tenant), user
    record_event("terminal.session.revoke", tenant=event_tenant, actor=actor, target=target,
                 data={"message": message, "sessions": session_ids, **({"cluster": cluster.slug} if cluster else {})})
    return session_ids


def wait_until_ended(session_ids: list[str], timeout: float = 3.0) -> bool:
    """True once every one of these sessions has ended (for telling an admin it is done), False on timeout."""
    deadline = time.monotonic() + timeout
    while TerminalSession.objects.filter(pk__in=session_ids, ended_at__isnull=True).exists():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
