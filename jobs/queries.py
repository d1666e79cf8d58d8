"""Reading the job cache for a user, in one place for the API and the pages.

Members see their own jobs; tenant admins see the jobs of every user mapped on the cluster (its
ClusterAccount rows), never those of people outside the tenant who share the Slurm (the poller does not
store those; jobs.models.QueueSummary counts them). A job the user may not see does not exist for them (404).
"""

from django.db.models import F, QuerySet
from django.http import Http404

from accounts.models import Membership
from accounts.tenancy import active_memberships
from clusters.models import Cluster
from jobs.models import Job

# Newest submissions first; rows without a submit time last. The API's cursor follows this order.
NEWEST_FIRST = (F("submit_time").desc(nulls_last=True), "-pk")
ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING"}


def is_tenant_admin(user, cluster: Cluster) -> bool:
    return active_memberships(user).filter(tenant=cluster.tenant_id, role=Membership.Role.ADMIN).exists()


def visible_jobs(user, cluster: Cluster, *, every_user: bool) -> QuerySet:
    """`every_user` is honoured for tenant admins only; everyone else gets their own jobs."""
    jobs = Job.objects.filter(cluster=cluster)
    if every_user and is_tenant_admin(user, cluster):
        return jobs.filter(owner__isnull=False)
    return jobs.filter(owner__user=user)


def filter_jobs(jobs: QuerySet, *, state=None, partition=None, name=None, posix_user=None) -> QuerySet:
    if state:
        jobs = jobs.filter(state=state.upper())
    if partition:
        jobs = jobs.filter(partition=partition)
    if name:
        jobs = jobs.filter(name__icontains=name)
    if posix_user:
        jobs = jobs.filter(posix_user=posix_user)
    return jobs


def job_for(user, cluster: Cluster, job_id: str) -> Job:
    job = visible_jobs(user, cluster, every_user=True).select_related("owner").filter(job_id=job_id).first()
    if job is None:
        raise Http404("No such job.")
    return job
