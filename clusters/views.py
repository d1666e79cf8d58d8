from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from accounts.tenancy import active_memberships, get_visible_or_404
from clusters import dashboard
from clusters.models import Cluster, ClusterAccount
from jobs.models import Partition, QueueSummary
from terminal.models import TerminalSession


@login_required
def home(request):
    """The dashboard: clusters, jobs, terminal sessions and quotas, from caches only (clusters/dashboard.py)."""
    memberships = list(active_memberships(request.user).select_related("tenant").order_by("tenant__name"))
    return render(request, "clusters/home.html", {"memberships": memberships, **dashboard.context(request.user)})


@login_required
def cluster_detail(request, tenant_slug, cluster_slug):
    cluster = get_visible_or_404(Cluster.objects.select_related("tenant"), request.user, tenant__slug=tenant_slug, slug=cluster_slug)
    account = ClusterAccount.objects.filter(cluster=cluster, user=request.user).first()
    sessions = TerminalSession.objects.filter(cluster=cluster, user=request.user)[:20]
    partitions = Partition.objects.filter(cluster=cluster)
    summary = QueueSummary.objects.filter(cluster=cluster).first()
    return render(request, "clusters/detail.html", {"cluster": cluster, "tenant": cluster.tenant, "account": account,
                                                    "sessions": sessions, "partitions": partitions, "summary": summary})
