"""REST API under /v1/ (django-ninja; OpenAPI at /v1/openapi.json, interactive docs at /v1/docs).

Auth: the web session (with CSRF for writes) or `Authorization: Bearer ctk_…` personal tokens, which
are scoped to one tenant. Everything of another tenant is a 404. Errors are JSON: {"detail": "..."},
and every status an operation can answer is declared in its `response` (tests/test_api.py checks it).
Failed token attempts are throttled per token prefix and per address (accounts/throttle.py): a locked
one is answered 429 with Retry-After, before the token is checked.
"""

import dataclasses
import re
from datetime import datetime

import pydantic
from django.http import Http404
from ninja import ModelSchema, NinjaAPI, Query, Schema, Status
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import HttpBearer, SessionAuth
from ninja.utils import check_csrf

from accounts import throttle
from accounts.services import authenticate_api_token
from clusters.models import Cluster, ClusterAccount
from jobs import actions, pollstate, queries, slurm, validation
from jobs.models import Job, Partition

MAX_TAIL_LINES = 10_000
_TOKEN_PREFIX = re.compile(r"ctk_([0-9a-f]{12})_.+", re.DOTALL)  # accounts/services.py create_api_token


class TokenAuth(HttpBearer):
    def authenticate(self, request, token):
        # Every well-formed token counts against its prefix, known or not (nothing tells which prefixes
        # exist); a malformed one only against the address. Throttled becomes a 429 (_throttled, below).
        prefix = match.group(1) if (match := _TOKEN_PREFIX.fullmatch(token)) else None
        return throttle.check_and_count(throttle.API_TOKEN, prefix, throttle.client_address(request),
                                        lambda: self._verify(request, token))

    @staticmethod
    def _verify(request, token):
        if "\x00" in token:
            return None
        api_token = authenticate_api_token(token)
        if api_token is None:
            return None
        request.user = api_token.user
        request.api_tenant = api_token.tenant
        return api_token


def _has_bearer(request) -> bool:
    return request.headers.get("Authorization", "").split(" ", 1)[0].lower() == "bearer"


class BrowserSessionAuth(SessionAuth):
    """The browser's sign-in cookie, CSRF-checked for writes.

    Only a request that the session really authenticates is CSRF-checked: one carrying a Bearer token
    is judged by the token alone, and one with no valid credentials at all is a 401 (ninja's own
    SessionAuth checks CSRF first, so a bad token on a POST came back as 403 "CSRF check Failed").
    """

    def __call__(self, request):
        if _has_bearer(request) or not request.user.is_authenticated:
            return None
        if not getattr(request, "_ninja_csrf_exempt", False) and check_csrf(request):
            raise HttpError(403, "CSRF check failed: a signed-in browser must send the X-CSRFToken header "
                                 "(scripts use an API token).")
        return request.user


api = NinjaAPI(title="Clusterra API", version="1", urls_namespace="v1", auth=[TokenAuth(), BrowserSessionAuth()],
               openapi_url="/openapi.json", docs_url="/docs")


@api.exception_handler(AuthenticationError)
def _unauthorized(request, exc):
    response = api.create_response(
        request, {"detail": "Not signed in: send Authorization: Bearer <API token> (this one is missing, wrong, "
                            "expired or revoked) or sign in."}, status=401)
    response["WWW-Authenticate"] = 'Bearer realm="clusterra"'
    return response


@api.exception_handler(throttle.Throttled)
def _throttled(request, exc):
    response = api.create_response(request, {"detail": exc.lock.message}, status=429)
    response["Retry-After"] = str(exc.lock.retry_after)
    return response


@api.exception_handler(ValidationError)
def _invalid_request(request, exc):
    """Requests that do not fit the schema: 400 like every other bad request, one line per field."""
    problems = []
    for error in exc.errors:
        # loc is ("body"|"query"|"path", [parameter name,] field...): keep the field's own path.
        loc = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path", "payload", "filters")]
        problems.append((".".join(loc) or "request", error.get("msg", "invalid")))
    body = {"detail": "; ".join(f"{field}: {message}" for field, message in problems) or "The request is not valid."}
    if problems:
        body["field"] = problems[0][0]
    return api.create_response(request, body, status=400)


@api.exception_handler(slurm.SlurmUnavailable)
def _slurm_unavailable(request, exc):
    response = api.create_response(request, {"detail": str(exc)}, status=503)
    response["Retry-After"] = "30"
    return response


@api.exception_handler(validation.JobRequestError)
def _bad_request(request, exc):
    return api.create_response(request, {"detail": exc.message, "field": exc.field}, status=400)


@api.exception_handler(actions.JobActionError)
def _job_action_error(request, exc):
    return api.create_response(request, {"detail": str(exc)}, status=exc.status)


@api.exception_handler(Http404)
def _not_found(request, exc):
    return api.create_response(request, {"detail": str(exc) or "Not found."}, status=404)


# --- scoping ------------------------------------------------------------------------------------
def visible_clusters(request):
    clusters = Cluster.objects.visible_to(request.user).select_related("tenant")
    tenant = getattr(request, "api_tenant", None)
    return clusters.filter(tenant=tenant) if tenant is not None else clusters


def get_cluster(request, cluster_id: int) -> Cluster:
    cluster = visible_clusters(request).filter(pk=cluster_id).first()
    if cluster is None:
        raise Http404("No such cluster.")
    return cluster


def get_job(request, cluster: Cluster, job_id: str) -> Job:
    if "\x00" in job_id:  # no job has one, and PostgreSQL cannot compare with it
        raise Http404("No such job.")
    return queries.job_for(request.user, cluster, job_id)


def active_account(request, cluster: Cluster) -> ClusterAccount:
    account = ClusterAccount.objects.select_related("cluster__tenant").filter(cluster=cluster, user=request.user).first()
    if account is None or account.state != ClusterAccount.State.ACTIVE:
        raise HttpError(403, f"You have no active account on {cluster.name}.")
    return account


# --- schemas --------------------------------------------------------------------------------------
class PollOut(Schema):
    """The job poller's last result for the cluster: how fresh the job cache is (jobs.pollstate)."""

    ok_at: datetime | None  # the last good poll: lists and details show the queue as of then
    failing: bool
    error: str  # the last failure, e.g. "Slurm on X is not answering (slurmctld unreachable: ...)"
    error_at: datetime | None
    down_since: datetime | None  # while failing
    retry_in: int | None  # seconds until the next try, while failing


class ClusterOut(Schema):
    id: int
    name: str
    slug: str
    tenant: str
    backend: str
    posix_username: str | None
    poll: PollOut | None  # None: not polled yet, or its state is not reachable


class JobOut(Schema):
    job_id: str
    array_job_id: int | None
    array_task_id: str
    name: str
    user: str
    partition: str
    state: str
    reason: str
    submit_time: datetime | None
    start_time: datetime | None
    end_time: datetime | None
    time_limit: int | None
    nodes: int | None
    cpus: int | None
    memory_mb: int | None
    gres: str
    node_list: str
    work_dir: str
    stdout_path: str
    stderr_path: str
    exit_code: int | None
    exit_signal: int | None  # the signal that ended the job (Slurm ExitCode code:signal), e.g. 15 for a cancelled one
    in_queue: bool

    @staticmethod
    def resolve_user(obj: Job) -> str:
        return obj.posix_user


class PartitionOut(ModelSchema):
    class Meta:
        model = Partition
        exclude = ["id", "cluster"]


class JobPage(Schema):
    items: list[JobOut]
    next_cursor: str | None


def _schema_from_dataclass(name: str, source) -> type[Schema]:
    """A request body with the fields of an action's request dataclass, every one optional."""
    fields = {f.name: (f.type | None, None) for f in dataclasses.fields(source)}
    return pydantic.create_model(name, __base__=Schema, **fields)


# One declaration of what a submission may carry: jobs.actions.SubmitRequest.
SubmitIn = _schema_from_dataclass("SubmitIn", actions.SubmitRequest)


class JobFilters(Schema):
    state: str | None = None
    partition: str | None = None
    name: str | None = None
    user: str | None = None
    cursor: str | None = None
    limit: int = 50

    @pydantic.field_validator("state", "partition", "name", "user", "cursor")
    @classmethod
    def _no_nul(cls, value):
        if value is not None and "\x00" in value:  # PostgreSQL cannot even compare with a NUL
            raise ValueError("must not contain NUL characters")
        return value


class OutputOut(Schema):
    job_id: str
    path: str
    lines: int
    text: str


class ErrorOut(Schema):
    detail: str
    field: str | None = None  # the request field at fault, for a 400


def errors(*codes: int) -> dict:
    """Response declarations for the error statuses an operation can answer; every one has 401, and 429
    (a Bearer token from a locked address or prefix: accounts/throttle.py)."""
    return {code: ErrorOut for code in sorted({401, 429, *codes})}


# --- endpoints -----------------------------------------------------------------------------------
@api.get("/clusters", response={200: list[ClusterOut], **errors()}, summary="Clusters you can see")
def list_clusters(request):
    accounts = {a.cluster_id: a for a in ClusterAccount.objects.filter(user=request.user)}
    return [
        ClusterOut(id=c.pk, name=c.name, slug=c.slug, tenant=c.tenant.slug, backend=c.backend,
                   posix_username=accounts[c.pk].posix_username if c.pk in accounts else None, poll=_poll_out(c))
        for c in visible_clusters(request)
    ]


def _poll_out(cluster: Cluster) -> PollOut | None:
    state = pollstate.read(cluster)
    if state is None:
        return None
    return PollOut(ok_at=state.ok_at, failing=state.failing, error=state.error, error_at=state.error_at,
                   down_since=state.down_since, retry_in=state.retry_in)


@api.get("/clusters/{cluster_id}/partitions", response={200: list[PartitionOut], **errors(400, 404)},
         summary="Partitions with idle/allocated nodes and CPUs (as of the last poll)")
def list_partitions(request, cluster_id: int):
    return list(Partition.objects.filter(cluster=get_cluster(request, cluster_id)))


@api.post("/clusters/{cluster_id}/jobs", response={201: JobOut, **errors(400, 403, 404, 413, 502, 503)},
          summary="Submit a job (script_path preferred)")
def submit(request, cluster_id: int, payload: SubmitIn):
    cluster = get_cluster(request, cluster_id)
    account = active_account(request, cluster)
    fields = {k: v for k, v in payload.dict().items() if v is not None}
    job = actions.submit_job(account, actions.SubmitRequest(**fields), actor=request.user,
                             client_address=request.META.get("REMOTE_ADDR"))
    return Status(201, job)


@api.get("/clusters/{cluster_id}/jobs", response={200: JobPage, **errors(400, 403, 404)}, summary="List jobs (newest first)")
def list_jobs(request, cluster_id: int, filters: Query[JobFilters]):
    cluster = get_cluster(request, cluster_id)
    if not 1 <= filters.limit <= 500:
        raise HttpError(400, "limit must be from 1 to 500.")
    if filters.user and not queries.is_tenant_admin(request.user, cluster):
        raise HttpError(403, "Only tenant admins can list other users' jobs.")
    jobs = queries.visible_jobs(request.user, cluster, every_user=bool(filters.user))
    jobs = queries.filter_jobs(jobs, state=filters.state, partition=filters.partition, name=filters.name, posix_user=filters.user)
    try:
        page, next_cursor = queries.newest_first_page(jobs, filters.cursor, filters.limit)
    except ValueError:
        raise HttpError(400, "cursor is not valid.") from None
    return {"items": page, "next_cursor": next_cursor}


@api.get("/clusters/{cluster_id}/jobs/{job_id}", response={200: JobOut, **errors(400, 404)}, summary="One job")
def job_detail(request, cluster_id: int, job_id: str):
    return get_job(request, get_cluster(request, cluster_id), job_id)


@api.delete("/clusters/{cluster_id}/jobs/{job_id}", response={200: JobOut, **errors(400, 403, 404, 502, 503)},
            summary="Cancel a job")
def cancel(request, cluster_id: int, job_id: str):
    cluster = get_cluster(request, cluster_id)
    job = get_job(request, cluster, job_id)
    account = active_account(request, cluster)
    return actions.cancel_job(account, job, actor=request.user, client_address=request.META.get("REMOTE_ADDR"))


@api.get("/clusters/{cluster_id}/jobs/{job_id}/output", response={200: OutputOut, **errors(400, 403, 404, 502, 503)},
         summary="The last lines of the job's standard output")
def job_output(request, cluster_id: int, job_id: str, tail: int = 100):
    cluster = get_cluster(request, cluster_id)
    job = get_job(request, cluster, job_id)
    account = active_account(request, cluster)
    if not 1 <= tail <= MAX_TAIL_LINES:
        raise HttpError(400, f"tail must be from 1 to {MAX_TAIL_LINES}.")
    text = actions.output_tail(account, job, tail)
    return {"job_id": job.job_id, "path": job.stdout_path, "lines": text.count("\n"), "text": text}
