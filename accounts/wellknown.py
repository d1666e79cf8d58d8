"""`/.well-known/openid-configuration` and the JWKS: what an IAM OIDC provider reads (no sign-in)."""

from django.http import JsonResponse
from django.urls import path
from django.views.decorators.http import require_safe

from accounts import issuer

# AWS and other relying parties cache these. Keys rotate rarely and a retired key stays published
# for longer than this, so a short JWKS cache is enough for a new key to be seen in time.
DISCOVERY_MAX_AGE = 3600
JWKS_MAX_AGE = 300


def _json(data: dict, max_age: int) -> JsonResponse:
    response = JsonResponse(data)
    response["Cache-Control"] = f"public, max-age={max_age}"
    return response


@require_safe
def openid_configuration(request):
    return _json(issuer.openid_configuration(), DISCOVERY_MAX_AGE)


@require_safe
def jwks(request):
    response = _json(issuer.jwks(), JWKS_MAX_AGE)
    response["Content-Type"] = "application/json"  # RFC 7517 allows application/jwk-set+json; AWS reads either
    return response


app_name = "wellknown"
urlpatterns = [
    path("openid-configuration", openid_configuration, name="openid_configuration"),
    path("jwks.json", jwks, name="jwks"),
]
