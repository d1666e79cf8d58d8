"""Every error under /v1/ is JSON `{"detail": "…"}`, as docs/api.md promises.

The API's own handlers (jobs/api.py) already answer that way. What reaches a client from outside them
did not: Django's URL resolver 404s an unknown path with the site's HTML page, ninja answers a wrong
method with a plain-text 405, an unhandled exception becomes the HTML 500 page and a body over
DATA_UPLOAD_MAX_MEMORY_SIZE an HTML 400. This middleware turns any non-JSON error response under the
API prefix into the JSON form, keeping its status and headers (Allow, Retry-After). The HTML pages
(/v1/docs) and successful responses pass untouched.
"""

import json
from http import HTTPStatus

from clusterra.ops import HybridMiddleware

API_PREFIX = "/v1/"


def _detail(request, response) -> str:
    status = response.status_code
    if status == 404:
        return f"No such API endpoint: {request.method} {request.path}. The operations are listed at /v1/docs."
    if status == 405:
        allowed = response.get("Allow", "")
        return f"{request.method} is not allowed on {request.path}" + (f"; allowed: {allowed}." if allowed else ".")
    if status >= 500:
        request_id = response.get("X-Request-ID", "")
        return ("Internal error: the request was not completed. Try again; if it keeps failing, give your administrator "
                f"the request id {request_id}." if request_id else "Internal error: the request was not completed.")
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return f"{phrase}."


def _as_json(request, response):
    if (response.status_code >= 400 and request.path.startswith(API_PREFIX)
            and not response.get("Content-Type", "").startswith("application/json")
            and not getattr(response, "streaming", False)):
        response.content = json.dumps({"detail": _detail(request, response)}).encode()
        response["Content-Type"] = "application/json; charset=utf-8"
        if response.has_header("Content-Length"):
            response["Content-Length"] = str(len(response.content))
    return response


class JsonApiErrorsMiddleware(HybridMiddleware):
    """Just after OpsEndpointsMiddleware, so it sees the response with its X-Request-ID."""

    def call(self, request):
        return _as_json(request, self.get_response(request))

    async def acall(self, request):
        return _as_json(request, await self.get_response(request))
