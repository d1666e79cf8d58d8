"""What every console view shares: the tenant check, the person lookup, the page context."""

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render
from django.urls import reverse

from accounts.models import Membership, User
from accounts.tenancy import administered_tenant_or_404

SECTIONS = [("people", "People", "console:people"), ("clusters", "Clusters", "console:clusters"),
            ("access", "Access rules", "console:access_rules"), ("identity", "Identity provider", "console:identity"),
            ("okta", "Okta", "console:okta"),
            ("provisioning", "Provisioning", "console:provisioning"),
            ("preview", "Mapping preview", "console:preview"), ("activity", "Activity", "console:activity"),
            ("sessions", "Live sessions", "terminal_admin:live")]


def console_view(view):
    """login_required, then the administered tenant (404 otherwise) as the view's second argument.

    Put require_POST *inside* this decorator: a member or an outsider gets the same 404 for every
    method, and only an admin learns that a URL wants POST.
    """
    @login_required
    @wraps(view)
    def wrapped(request, tenant_slug, **kwargs):
        tenant = administered_tenant_or_404(request.user, tenant_slug)
        return view(request, tenant, **kwargs)
    return wrapped


def person_or_404(tenant, user_id) -> tuple[User, Membership]:
    """A person of the tenant: anyone with a membership there, whatever its status."""
    membership = Membership.objects.filter(tenant=tenant, user_id=user_id).select_related("user").first()
    if membership is None:
        raise Http404("No such person in this tenant.")
    return membership.user, membership


def posted(request):
    """The POST data to bind a form to (an empty POST too: it shows the form's errors), or None for a GET."""
    return request.POST if request.method == "POST" else None


def page(request, tenant, section: str, template: str, context: dict | None = None, *, status: int = 200):
    sections = [{"label": label, "url": reverse(name, args=[tenant.slug]), "current": key == section} for key, label, name in SECTIONS]
    return render(request, f"console/{template}", {"tenant": tenant, "sections": sections, **(context or {})}, status=status)
