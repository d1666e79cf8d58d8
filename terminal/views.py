import uuid
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from accounts.models import Tenant, User
from accounts.services import set_terminal_renderer
from accounts.tenancy import administered_tenant_or_404, get_visible_or_404
from clusters.models import Cluster, ClusterAccount
from terminal.actions import revoke_terminal_sessions, wait_until_ended
from terminal.models import TerminalSession


@login_required
def terminal_page(request, tenant_slug, cluster_slug):
    cluster = get_visible_or_404(Cluster.objects.select_related("tenant"), request.user, tenant__slug=tenant_slug, slug=cluster_slug)
    account = ClusterAccount.objects.filter(cluster=cluster, user=request.user, state=ClusterAccount.State.ACTIVE).first()
    if account is None:
        raise PermissionDenied("You have no active account on this cluster.")
    if request.GET.get("renderer") in User.Renderer.values:
        set_terminal_renderer(request.user, request.GET["renderer"])
    cluster_url = reverse("clusters:detail", args=[tenant_slug, cluster_slug])
    attach = _reattachable_session(request, cluster)
    # "New session" must not carry ?attach=: it starts a fresh shell.
    new_session_url = f"{request.path}?{urlencode({k: v for k, v in request.GET.items() if k != 'attach'})}".rstrip("?")
    return render(request, "terminal/terminal.html", {
        "tenant": cluster.tenant,
        "cluster": cluster,
        "account": account,
        "ws_path": f"/ws/t/{tenant_slug}/c/{cluster_slug}/terminal/",
        "renderer": request.user.terminal_renderer,
        "cwd": request.GET.get("cwd", ""),
        "new_session_url": new_session_url,
        # ?attach=<session id> (the dashboard's Reattach link): the page reattaches to that shell, through the
        # process holding it (its worker id), instead of opening a new one.
        "attach_id": str(attach.pk) if attach else "",
        "attach_worker": attach.owner.worker if attach and attach.owner_id else "",
        "cluster_url": cluster_url,
    })


def _reattachable_session(request, cluster) -> TerminalSession | None:
    """The user's own live session on this cluster named by ?attach=, or None (with a note if it has ended)."""
    raw = request.GET.get("attach")
    if not raw:
        return None
    try:
        session_id = uuid.UUID(raw)
    except ValueError:
        session_id = None
    session = None
    if session_id is not None:
        session = (TerminalSession.objects.filter(pk=session_id, user=request.user, cluster=cluster, ended_at__isnull=True)
                   .select_related("owner").first())
    if session is None:
        messages.info(request, "That terminal session has ended; this is a new one.")
    return session


def _administered_tenant(request, tenant_slug) -> Tenant:
    return administered_tenant_or_404(request.user, tenant_slug)


@login_required
def live_sessions(request, tenant_slug):
    tenant = _administered_tenant(request, tenant_slug)
    sessions = (
        TerminalSession.objects.in_tenant(tenant).filter(ended_at__isnull=True).select_related("user", "cluster")
    )
    recent = TerminalSession.objects.in_tenant(tenant).filter(ended_at__isnull=False).select_related("user", "cluster")[:50]
    return render(request, "terminal/sessions.html", {"tenant": tenant, "sessions": sessions, "recent": recent})


@login_required
@require_POST
def terminate_session(request, tenant_slug, session_id):
    tenant = _administered_tenant(request, tenant_slug)
    session = get_object_or_404(TerminalSession.objects.in_tenant(tenant).select_related("cluster__tenant", "user"), pk=session_id)
    marked = revoke_terminal_sessions(actor=request.user, session=session, message=f"Ended by {request.user.email}.")
    who = f"{session.posix_username}'s session on {session.cluster.name}"
    if wait_until_ended(marked):
        messages.success(request, f"Ended {who}.")
    else:  # recorded: the holding process ends it at its next check, or the others once it is found lost
        messages.warning(request, f"The end of {who} is recorded, but the server holding it has not confirmed yet. "
                                  "It ends within seconds; if that server is down, when it is found lost.")
    return redirect("terminal_admin:live", tenant_slug=tenant.slug)
