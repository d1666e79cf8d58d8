from django.contrib import admin
from django.urls import include, path

from accounts import oidc
from audit.api import router as audit_router
from clusters import views as cluster_views
from jobs.api import api

api.add_router("/audit", audit_router)  # /v1/audit/events, /v1/audit/search (audit/api.py)

urlpatterns = [
    path("", cluster_views.home, name="home"),
    path("accounts/", include("accounts.urls")),
    # Single sign-on (accounts/oidc.py); the callback URL is the one registered at the IdP.
    path("oidc/authenticate/", oidc.SignInStartView.as_view(), name="oidc_authentication_init"),
    path("oidc/callback/", oidc.SignInCallbackView.as_view(), name="oidc_authentication_callback"),
    path(".well-known/", include("accounts.wellknown")),  # OIDC discovery + JWKS for AWS (accounts/issuer.py)
    path("t/<slug:tenant_slug>/c/<slug:cluster_slug>/", include("clusters.urls")),
    path("t/<slug:tenant_slug>/c/<slug:cluster_slug>/terminal/", include("terminal.urls")),
    path("t/<slug:tenant_slug>/c/<slug:cluster_slug>/jobs/", include("jobs.urls")),
    path("t/<slug:tenant_slug>/c/<slug:cluster_slug>/files/", include("filebrowser.urls")),
    path("t/<slug:tenant_slug>/sessions/", include("terminal.admin_urls")),
    path("t/<slug:tenant_slug>/audit/", include("audit.urls")),  # own sessions and activity, playback (audit/views.py)
    path("t/<slug:tenant_slug>/admin/", include("accounts.console.urls")),  # the tenant admin console
    path("hooks/okta/", include("okta.urls")),  # Okta event hooks (okta/hooks.py)
    path("scim/v2/", include("scim.urls")),  # SCIM 2.0 for Okta, Entra ID (scim/views.py; token auth, no CSRF)
    path("admin/", admin.site.urls),
    path("v1/", api.urls),
]
