"""Reading the job cache for a user, in one place for the API and the pages.

Members see their own jobs; tenant admins see the jobs of every user mapped on the cluster (its
ClusterAccount rows), never those of people outside the tenant who share the Slurm (the poller does not
store those; jobs.models.QueueSummary counts them). A job the user may not see does not exist for them (404).
"""

import base64
import binascii
from datetime import UTC, datetime

from django.db.models import F, Q, QuerySet
from django.http import Http404

from accounts.models import Membership
from accounts.tenancy import active_memberships
from clusters.models import Cluster, ClusterAccount
from jobs.models import Job

# Newest submissions first; rows without a submit time last. The API's cursor follows this order.
NEWEST_FIRST = (F("submit_time").desc(nulls_last=True), "-pk")
# Every state squeue reports for a job that is not over (squeue(1), JOB STATE CODES); the rest are final.
ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
                 "RESIZING", "RESV_DEL_HOLD", "SPECIAL_EXIT", "STOPPED", "SIGNALING", "STAGE_OUT"}
# Its programs have ended (COMPLETING: processes being cleaned up; STAGE_OUT: burst-buffer data going out): the
# exit code is known and there is nothing left to cancel.
ENDING_STATES = {"COMPLETING", "STAGE_OUT"}
CANCELLABLE_STATES = ACTIVE_STATES - ENDING_STATES


def is_tenant_admin(user, cluster: Cluster) -> bool:
    return active_memberships(user).filter(tenant=cluster.tenant_id, role=Membership.Role.ADMIN).exists()


_UNKNOWN = object()


def visible_jobs(user, cluster: Cluster, *, every_user: bool, is_admin: bool | None = None, account=_UNKNOWN) -> QuerySet:
    """`every_user` is honoured for tenant admins only; everyone else gets their own jobs.

    Callers that already know them pass `is_admin` and the user's `account` on the cluster (or None), which
    saves their queries. Own jobs are filtered by the account's id, not through a join to the account: that
    is what the list index (cluster, owner, submit time, id) serves without a sort, however long the queue.
    """
    jobs = Job.objects.filter(cluster=cluster)
    if every_user and (is_tenant_admin(user, cluster) if is_admin is None else is_admin):
        return jobs.filter(owner__isnull=False)
    if account is _UNKNOWN:
        account = ClusterAccount.objects.filter(cluster=cluster, user=user).only("pk").first()
    if account is None:
        return jobs.none()
    return jobs.filter(owner_id=account.pk)


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


# Pages of a list, newest first. The cursor is the (submit time, pk) of the last row of a page, so a page
# boundary stays stable while the poller inserts rows. Rows without a submit time sort last.
def encode_cursor(job: Job) -> str:
    stamp = job.submit_time.isoformat() if job.submit_time else ""
    return base64.urlsafe_b64encode(f"{stamp}|{job.pk}".encode()).decode().rstrip("=")


def after_cursor(jobs: QuerySet, cursor: str) -> QuerySet:
    """The rows after `cursor`; ValueError if it is not one of ours."""
    try:
        stamp, pk = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split("|")
        pk = int(pk)
        when = datetime.fromisoformat(stamp) if stamp else None
        if when is not None:
            when = when.astimezone(UTC)  # an out-of-range stamp fails here, not in the database (a 500 on SQLite)
    except (ValueError, UnicodeDecodeError, binascii.Error, OverflowError):
        raise ValueError("cursor is not valid") from None
    if when is None:
        return jobs.filter(submit_time__isnull=True, pk__lt=pk)
    return jobs.filter(Q(submit_time__lt=when) | Q(submit_time=when, pk__lt=pk) | Q(submit_time__isnull=True))


def newest_first_page(jobs: QuerySet, cursor: str | None, limit: int) -> tuple[list[Job], str | None]:
    """One page of `jobs` in NEWEST_FIRST order and the cursor of the next one (None on the last page)."""
    if cursor:
        jobs = after_cursor(jobs, cursor)
    page = list(jobs.order_by(*NEWEST_FIRST)[: limit + 1])
    return page[:limit], encode_cursor(page[limit - 1]) if len(page) > limit else None
