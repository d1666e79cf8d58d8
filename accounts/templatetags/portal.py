"""{% main_nav %}: the portal's navigation bar; `compact_data`: an audit event's data on one line."""

import json

from django import template
from django.db.models import OuterRef, Subquery
from django.urls import reverse

from accounts.models import Membership
from accounts.tenancy import active_memberships
from clusters.models import Cluster

register = template.Library()


def _nav_targets(request) -> dict:
    """The user's admin tenants and the first cluster they see (one query, once per request)."""
    cached = getattr(request, "_clusterra_nav", None)
    if cached is None:
        first_cluster = Cluster.objects.filter(tenant=OuterRef("tenant")).order_by("name").values("slug")[:1]
        memberships = list(active_memberships(request.user).select_related("tenant").order_by("tenant__name")
                           .annotate(first_cluster=Subquery(first_cluster)))
        admin_of = [m.tenant for m in memberships if m.role == Membership.Role.ADMIN]
        first = next((m for m in memberships if m.first_cluster), None)
        cached = {"admin_of": admin_of,
                  "jobs_url": reverse("jobs:list", args=[first.tenant.slug, first.first_cluster]) if first else reverse("home"),
                  # their own terminal sessions (search, playback) in their first tenant
                  "sessions_url": reverse("audit:sessions", args=[memberships[0].tenant.slug]) if memberships else None}
        request._clusterra_nav = cached
    return cached


@register.inclusion_tag("_nav.html", takes_context=True)
def main_nav(context):
    request = context.get("request")
    if request is None or not request.user.is_authenticated:
        return {"links": []}
    targets = _nav_targets(request)
    links = [("Dashboard", reverse("home")), ("Jobs", targets["jobs_url"])]
    if targets["sessions_url"]:
        links.append(("My sessions", targets["sessions_url"]))
    several = len(targets["admin_of"]) > 1
    for tenant in targets["admin_of"]:
        suffix = f" · {tenant.name}" if several else ""
        links.append((f"Sessions{suffix}", reverse("terminal_admin:live", args=[tenant.slug])))
        links.append((f"Admin{suffix}", reverse("console:people", args=[tenant.slug])))
    links += [("API tokens", reverse("accounts:api_tokens")), ("API docs", "/v1/docs")]
    path = request.path
    best = max((url for _, url in links if url != "/" and path.startswith(url)), key=len, default="/" if path == "/" else None)
    return {"links": [{"label": label, "url": url, "current": url == best} for label, url in links]}


@register.filter
def compact_data(data, limit: int = 300) -> str:
    """`key=value key2=[a, b]` for an audit event's data, cut at `limit` characters."""
    if not isinstance(data, dict) or not data:
        return ""
    parts = []
    for key, value in data.items():
        if value in (None, "", [], {}):
            continue
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)
        parts.append(f"{key}={text}")
    line = " ".join(parts)
    return line if len(line) <= limit else line[: limit - 1] + "…"
