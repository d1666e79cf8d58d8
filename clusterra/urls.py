from django.contrib import admin
from django.urls import include, path

from clusters import views as cluster_views
from jobs.api import api

urlpatterns = [
    path("", cluster_views.home, name="home"),
    path("accounts/", include("accounts.urls")),
    path(".well-known/", include("accounts.wellknown")),  # OIDC discovery + JWKS for AWS (accounts/issuer.py)
    path("t/<slug:tenant_slug>/c/<slug:cluster_slug>/", include("clusters.urls")),
    path("t/<slug:tenant_slug>/c/<slug:cluster_slug>/terminal/", include("terminal.urls")),
    path("t/<slug:tenant_slug>/c/<slug:cluster_slug>/jobs/", include("jobs.urls")),
    path("t/<slug:tenant_slug>/sessions/", include("terminal.admin_urls")),
    path("admin/", admin.site.urls),
    path("v1/", api.urls),
]
