"""The admin console's Provisioning section (/t/<tenant>/admin/provisioning/): SCIM tokens and what the IdP pushed."""

from django import forms
from django.contrib import messages
from django.db.models import Count
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from accounts.console.common import console_view, page
from accounts.models import AccessRule
from scim.models import ScimGroup, ScimToken, ScimUser
from scim.tokens import create_scim_token, revoke_scim_token


class ScimTokenForm(forms.Form):
    name = forms.CharField(max_length=100, initial="Okta", help_text="What will use it, e.g. Okta or Entra ID. "
                           "Audit events name the IdP's changes by it.")


@console_view
def provisioning(request, tenant):
    form = ScimTokenForm(request.POST if request.method == "POST" else None)
    new_token = None
    if request.method == "POST" and form.is_valid():
        token, new_token = create_scim_token(tenant=tenant, name=form.cleaned_data["name"], actor=request.user)
        form = ScimTokenForm()
    rules = {rule.group: rule for rule in AccessRule.objects.filter(tenant=tenant).prefetch_related("clusters")}  # exact, as sign-in
    groups = [{"group": g, "rule": rules.get(g.display_name)}
              for g in ScimGroup.objects.filter(tenant=tenant).annotate(n=Count("memberships")).order_by("display_name")]
    people = ScimUser.objects.filter(tenant=tenant)
    context = {
        "form": form, "new_token": new_token, "tokens": ScimToken.objects.filter(tenant=tenant),
        "base_url": request.build_absolute_uri("/scim/v2"), "groups": groups,
        "people_active": people.filter(active=True).count(), "people_inactive": people.filter(active=False).count(),
    }
    response = page(request, tenant, "provisioning", "provisioning.html", context, status=400 if form.errors else 200)
    if new_token:
        response["Cache-Control"] = "no-store"  # the page holds a secret shown once
    return response


@console_view
@require_POST
def revoke_token(request, tenant, token_id):
    token = get_object_or_404(ScimToken, tenant=tenant, pk=token_id)
    if revoke_scim_token(token, actor=request.user):
        messages.success(request, f"SCIM token {token.name} (cst_{token.prefix}_…) revoked: the IdP's next request with it is refused.")
    return redirect("console:provisioning", tenant.slug)
