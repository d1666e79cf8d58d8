"""/scim/v2/…: the SCIM 2.0 HTTP interface (RFC 7644) for Okta, Entra ID and any other SCIM client.

Authentication is the tenant's SCIM bearer token only (never a session cookie; no CSRF: nothing a browser
sends on its own authenticates here). Failed token attempts are throttled (accounts.throttle, kind SCIM).
Every answer is `application/scim+json`; every refusal a SCIM error body (`status`, `scimType`, `detail`),
never an HTML page or a traceback. Bodies are JSON (application/scim+json or application/json) of at most
MAX_BODY bytes.
"""

import json
import logging
import re
import uuid

from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt
from pydantic import ValidationError as PydanticValidationError
from scim2_models import (
    Context,
    Error,
    InvalidSyntaxException,
    ListResponse,
    Meta,
    NotFoundException,
    ResourceType,
    ResponseParameters,
    Schema,
    SCIMException,
    SearchRequest,
)

from accounts import throttle
from scim import service
from scim.models import ScimGroup, ScimUser
from scim.schema import DEFAULT_COUNT, MAX_RESULTS, PROVIDER, GroupResource, UserResource, filter_query
from scim.tokens import authenticate_scim_token, token_prefix

logger = logging.getLogger(__name__)

CONTENT_TYPE = "application/scim+json"
MAX_BODY = 1024 * 1024  # bytes; a larger body is refused with 413 before it is read
ACCEPTED_TYPES = ("application/scim+json", "application/json")


def scim_response(payload: dict | None, status: int = 200, headers: dict | None = None) -> HttpResponse:
    body = b"" if payload is None else json.dumps(payload, ensure_ascii=False).encode()
    response = HttpResponse(body, status=status, content_type=CONTENT_TYPE if payload is not None else None)
    for name, value in (headers or {}).items():
        response[name] = value
    response["Cache-Control"] = "no-store"
    return response


def error_response(status: int, detail: str, scim_type: str | None = None, headers: dict | None = None) -> HttpResponse:
    error = Error(status=status, scim_type=scim_type, detail=detail)
    return scim_response(error.model_dump(scim_ctx=Context.DEFAULT), status, headers)


def _from_exception(exc: SCIMException) -> HttpResponse:
    error = exc.to_error()
    status = int(error.status or 400)
    return scim_response(error.model_dump(scim_ctx=Context.DEFAULT), status)


def _bearer(request) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, credential = header.partition(" ")
    return credential.strip() if scheme.lower() == "bearer" and credential.strip() else None


def _read_body(request) -> dict:
    content_type = request.META.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if content_type and content_type not in ACCEPTED_TYPES:
        raise _Refusal(415, f"Send {ACCEPTED_TYPES[0]} (or {ACCEPTED_TYPES[1]}), not {content_type}.")
    raw = request.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise _Refusal(413, f"The body is larger than {MAX_BODY} bytes.")
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidSyntaxException(detail=f"The body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidSyntaxException(detail="The body must be a JSON object.")
    return body


class _Refusal(Exception):
    def __init__(self, status: int, detail: str, scim_type: str | None = None, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.detail, self.scim_type, self.headers = status, detail, scim_type, headers


def scim_view(view):
    """Token (throttled), body limit, and every failure as a SCIM error. The view gets (request, token, …)."""
    @csrf_exempt
    def wrapped(request, *args, **kwargs):
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > MAX_BODY:
            return error_response(413, f"The body is larger than {MAX_BODY} bytes.")
        text = _bearer(request)
        address = throttle.client_address(request)
        try:
            token = throttle.check_and_count(throttle.SCIM, token_prefix(text) if text else None, address,
                                             lambda: authenticate_scim_token(text) if text else None)
        except throttle.Throttled as exc:
            return error_response(429, exc.lock.message, headers={"Retry-After": str(exc.lock.retry_after)})
        if token is None:
            return error_response(401, "A valid SCIM bearer token is required (Authorization: Bearer cst_…).",
                                  headers={"WWW-Authenticate": 'Bearer realm="SCIM"'})
        request.scim_token = token
        request.scim_actor = service.ScimActor(token=token, address=address)
        request.scim_base = request.build_absolute_uri("/scim/v2").rstrip("/")
        try:
            return view(request, token, *args, **kwargs)
        except _Refusal as exc:
            return error_response(exc.status, exc.detail, exc.scim_type, exc.headers)
        except SCIMException as exc:
            return _from_exception(exc)
        except PydanticValidationError as exc:
            return _from_exception(service.validation_error(exc))
        except Exception:
            logger.exception("SCIM %s %s failed", request.method, request.path)
            return error_response(500, "The server could not complete the request; it was logged.")
    return wrapped


def _method_not_allowed(request, allowed: str) -> HttpResponse:
    return error_response(405, f"{request.method} is not supported here (only {allowed}).", headers={"Allow": allowed})


def _parameters(request, model) -> SearchRequest:
    query = {key: request.GET.get(key) for key in request.GET}
    allowed = {"filter", "startIndex", "count", "attributes", "excludedAttributes", "sortBy", "sortOrder"}
    query = {key: value for key, value in query.items() if key in allowed}
    try:
        return SearchRequest[model].model_validate(query, scim_ctx=Context.SEARCH_REQUEST)
    except PydanticValidationError as exc:
        raise service.validation_error(exc) from None


def _response_parameters(request):
    query = {key: request.GET.get(key) for key in ("attributes", "excludedAttributes") if key in request.GET}
    try:
        return ResponseParameters.model_validate(query, scim_ctx=Context.RESOURCE_QUERY_REQUEST) if query else None
    except PydanticValidationError as exc:
        raise service.validation_error(exc) from None


def _dump(resource, context, parameters=None) -> dict:
    return resource.model_dump(scim_ctx=context, response_parameters=parameters)


def _list(request, token, model, rows, to_resource):
    search = _parameters(request, model)
    if search.filter:
        rows = rows.filter(filter_query(str(search.filter), resource=model)).distinct()
    start = max(1, search.start_index or 1)
    count = DEFAULT_COUNT if search.count is None else min(max(0, search.count), MAX_RESULTS)
    total = rows.count()
    page = list(rows.order_by("created_at", "id")[start - 1:start - 1 + count]) if count else []
    resources = [to_resource(row) for row in page]
    response = ListResponse[model](total_results=total, start_index=start, items_per_page=len(resources),
                                   resources=resources)
    return scim_response(response.model_dump(scim_ctx=Context.SEARCH_RESPONSE, response_parameters=search))


# --- Users ---------------------------------------------------------------------------------------------


@scim_view
def users(request, token):
    if request.method == "GET":
        rows = ScimUser.objects.filter(tenant=token.tenant)
        return _list(request, token, UserResource, rows, lambda p: service.user_resource(p, request.scim_base))
    if request.method == "POST":
        person = service.create_user(tenant=token.tenant, body=_read_body(request), actor=request.scim_actor)
        resource = service.user_resource(person, request.scim_base)
        return scim_response(_dump(resource, Context.RESOURCE_CREATION_RESPONSE, _response_parameters(request)), 201,
                             {"Location": resource.meta.location})
    return _method_not_allowed(request, "GET, POST")


def _row_or_404(model, token, scim_id: str, what: str):
    """The tenant's user or group with this SCIM id; another tenant's, or none, is a SCIM 404."""
    row = model.objects.select_related("tenant").filter(tenant=token.tenant, scim_id=scim_id).first() \
        if _is_uuid(scim_id) else None
    if row is None:
        raise NotFoundException(detail=f"No {what} {scim_id} in this tenant.")
    return row


@scim_view
def user(request, token, scim_id):
    person = _row_or_404(ScimUser, token, scim_id, "user")
    actor, base = request.scim_actor, request.scim_base
    if request.method == "GET":
        return scim_response(_dump(service.user_resource(person, base), Context.RESOURCE_QUERY_RESPONSE, _response_parameters(request)))
    if request.method == "PUT":
        person = service.replace_user(person, body=_read_body(request), actor=actor, base_url=base)
        return scim_response(_dump(service.user_resource(person, base), Context.RESOURCE_REPLACEMENT_RESPONSE, _response_parameters(request)))
    if request.method == "PATCH":
        person = service.patch_user(person, body=_read_body(request), actor=actor, base_url=base)
        return scim_response(_dump(service.user_resource(person, base), Context.RESOURCE_PATCH_RESPONSE, _response_parameters(request)))
    if request.method == "DELETE":
        service.delete_user(person, actor=actor)
        return scim_response(None, 204)
    return _method_not_allowed(request, "GET, PUT, PATCH, DELETE")


# --- Groups --------------------------------------------------------------------------------------------


def _wants_members(request) -> bool:
    excluded = {a.strip().lower() for a in request.GET.get("excludedAttributes", "").split(",")}
    wanted = {a.strip().lower() for a in request.GET.get("attributes", "").split(",") if a.strip()}
    return "members" not in excluded and (not wanted or "members" in wanted or "members.value" in wanted)


@scim_view
def groups(request, token):
    base = request.scim_base
    if request.method == "GET":
        members = _wants_members(request)
        rows = ScimGroup.objects.filter(tenant=token.tenant)
        return _list(request, token, GroupResource, rows, lambda g: service.group_resource(g, base, members=members))
    if request.method == "POST":
        group = service.create_group(tenant=token.tenant, body=_read_body(request), actor=request.scim_actor)
        resource = service.group_resource(group, base)
        return scim_response(_dump(resource, Context.RESOURCE_CREATION_RESPONSE, _response_parameters(request)), 201,
                             {"Location": resource.meta.location})
    return _method_not_allowed(request, "GET, POST")


@scim_view
def group(request, token, scim_id):
    group = _row_or_404(ScimGroup, token, scim_id, "group")
    actor, base = request.scim_actor, request.scim_base
    if request.method == "GET":
        resource = service.group_resource(group, base, members=_wants_members(request))
        return scim_response(_dump(resource, Context.RESOURCE_QUERY_RESPONSE, _response_parameters(request)))
    if request.method == "PUT":
        group = service.replace_group(group, body=_read_body(request), actor=actor, base_url=base)
        return scim_response(_dump(service.group_resource(group, base), Context.RESOURCE_REPLACEMENT_RESPONSE,
                                   _response_parameters(request)))
    if request.method == "PATCH":
        service.patch_group(group, body=_read_body(request), actor=actor, base_url=base)
        if "attributes" in request.GET:  # RFC 7644 §3.5.2: the resource only when asked for
            return scim_response(_dump(service.group_resource(group, base), Context.RESOURCE_PATCH_RESPONSE,
                                       _response_parameters(request)))
        return scim_response(None, 204)
    if request.method == "DELETE":
        service.delete_group(group, actor=actor)
        return scim_response(None, 204)
    return _method_not_allowed(request, "GET, PUT, PATCH, DELETE")


# --- discovery (RFC 7644 §4) ---------------------------------------------------------------------------


@scim_view
def service_provider_config(request, token):
    if request.method != "GET":
        return _method_not_allowed(request, "GET")
    config = PROVIDER.config.model_copy()
    config.meta = Meta(resource_type="ServiceProviderConfig", location=f"{request.scim_base}/ServiceProviderConfig")
    return scim_response(config.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))


def _with_location(item, base: str, path: str):
    item = item.model_copy()
    item.meta = Meta(resource_type=type(item).__name__, location=f"{base}/{path}")
    return item


@scim_view
def resource_types(request, token, name=None):
    if request.method != "GET":
        return _method_not_allowed(request, "GET")
    items = [_with_location(rt, request.scim_base, f"ResourceTypes/{rt.id or rt.name}") for rt in PROVIDER.resource_types]
    if name is not None:
        found = [rt for rt in items if (rt.id or rt.name).lower() == name.lower()]
        if not found:
            raise NotFoundException(detail=f"No resource type {name}.")
        return scim_response(found[0].model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))
    response = ListResponse[ResourceType](total_results=len(items), start_index=1, items_per_page=len(items), resources=items)
    return scim_response(response.model_dump(scim_ctx=Context.SEARCH_RESPONSE))


@scim_view
def schemas(request, token, schema_id=None):
    if request.method != "GET":
        return _method_not_allowed(request, "GET")
    items = [_with_location(s, request.scim_base, f"Schemas/{s.id}") for s in PROVIDER.schemas]
    if schema_id is not None:
        found = [s for s in items if str(s.id).lower() == schema_id.lower()]
        if not found:
            raise NotFoundException(detail=f"No schema {schema_id}.")
        return scim_response(found[0].model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))
    response = ListResponse[Schema](total_results=len(items), start_index=1, items_per_page=len(items), resources=items)
    return scim_response(response.model_dump(scim_ctx=Context.SEARCH_RESPONSE))


@scim_view
def not_found(request, token, rest=""):
    if rest.rstrip("/").lower() in ("bulk", ".search", "users/.search", "groups/.search", "me"):
        return error_response(501, f"/{rest} is not supported by this server (see /ServiceProviderConfig).")
    return error_response(404, f"No SCIM endpoint /{rest}.")


_UUID = re.compile(r"^[0-9a-fA-F-]{32,36}$")


def _is_uuid(text: str) -> bool:
    if not _UUID.match(text or ""):
        return False
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True

