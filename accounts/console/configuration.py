"""The tenant's set-up: clusters, access rules, and its identity provider and policy."""

from django.contrib import messages
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from accounts import oidc
from accounts.console.common import console_view, page, posted
from accounts.console.forms import AccessRuleForm, ClusterForm, IdentityProviderForm, TenantPolicyForm
from accounts.models import AccessRule, IdentityProvider, Tenant
from accounts.services import delete_access_rule, save_access_rule, save_identity_provider, save_tenant_policy
from clusters.models import Cluster, ClusterAccount
from clusters.services import save_cluster

# --- clusters ---------------------------------------------------------------------------------------


@console_view
def clusters(request, tenant):
    active = Count("accounts", filter=Q(accounts__state=ClusterAccount.State.ACTIVE))
    waiting = Count("accounts", filter=~Q(accounts__head_node_action=""))
    rows = Cluster.objects.filter(tenant=tenant).annotate(active=active, waiting=waiting).order_by("name")
    return page(request, tenant, "clusters", "clusters.html", {"clusters": rows})


@console_view
def cluster_edit(request, tenant, cluster_slug=None):
    cluster = get_object_or_404(Cluster, tenant=tenant, slug=cluster_slug) if cluster_slug else Cluster(tenant=tenant)
    form = ClusterForm(posted(request), instance=cluster, tenant=tenant)
    if request.method == "POST" and form.is_valid():
        created = cluster.pk is None
        save_cluster(form.save(commit=False), actor=request.user)
        messages.success(request, f"Cluster {cluster.name} {'created' if created else 'saved'}.")
        return redirect("console:clusters", tenant.slug)
    return page(request, tenant, "clusters", "cluster_form.html", {"form": form, "cluster": cluster})


# --- access rules -----------------------------------------------------------------------------------


@console_view
def access_rules(request, tenant):
    rules = AccessRule.objects.filter(tenant=tenant).prefetch_related("clusters")
    return page(request, tenant, "access", "access_rules.html", {"rules": rules})


@console_view
def access_rule_edit(request, tenant, rule_id=None):
    rule = get_object_or_404(AccessRule, tenant=tenant, pk=rule_id) if rule_id else AccessRule(tenant=tenant)
    form = AccessRuleForm(posted(request), instance=rule, tenant=tenant)
    if request.method == "POST" and form.is_valid():
        created = rule.pk is None
        save_access_rule(form.save(commit=False), clusters=list(form.cleaned_data["clusters"]), actor=request.user)
        messages.success(request, f"Rule for {rule.group} {'created' if created else 'saved'}. It applies at each person's next "
                                  "sign-in; the mapping preview shows what it gives.")
        return redirect("console:access_rules", tenant.slug)
    return page(request, tenant, "access", "access_rule_form.html", {"form": form, "rule": rule})


@console_view
def access_rule_delete(request, tenant, rule_id):
    rule = get_object_or_404(AccessRule, tenant=tenant, pk=rule_id)
    if request.method == "POST":
        delete_access_rule(rule, actor=request.user)
        messages.success(request, f"Rule for {rule.group} deleted. People it gave access lose it at their next sign-in.")
        return redirect("console:access_rules", tenant.slug)
    return page(request, tenant, "access", "access_rule_delete.html", {"rule": rule})


# --- identity provider and policy -------------------------------------------------------------------


def _identity_page(request, tenant, *, provider_form=None, policy_form=None, test=None, status=200):
    row = IdentityProvider.objects.filter(tenant=tenant).first()
    env = oidc.environment_provider() if row is None else None
    env = env if env is not None and env.tenant_id == tenant.pk else None
    if env is None and provider_form is None:
        provider_form = IdentityProviderForm(instance=row or IdentityProvider(tenant=tenant))
    if policy_form is None:
        policy_form = TenantPolicyForm(instance=Tenant.objects.get(pk=tenant.pk), has_sso=oidc.provider_for_tenant(tenant) is not None)
    return page(request, tenant, "identity", "identity.html", {
        "provider": row, "env_provider": env, "provider_form": provider_form, "policy_form": policy_form, "test": test,
        "callback_url": request.build_absolute_uri("/oidc/callback/"),
    }, status=status)


@console_view
def identity(request, tenant):
    return _identity_page(request, tenant)


@console_view
@require_POST
def identity_provider_save(request, tenant):
    row = IdentityProvider.objects.filter(tenant=tenant).first()
    if row is None and oidc.provider_for_tenant(tenant) is not None:
        messages.error(request, "This tenant's identity provider is set in the server's environment (CLUSTERRA_OIDC_*); "
                                "change it there.")
        return redirect("console:identity", tenant.slug)
    form = IdentityProviderForm(request.POST, instance=row or IdentityProvider(tenant=tenant))
    if not form.is_valid():
        return _identity_page(request, tenant, provider_form=form, status=400)
    provider = save_identity_provider(form.save(commit=False), actor=request.user, client_secret=form.cleaned_data["client_secret"])
    messages.success(request, f"Identity provider {provider.name} saved. Test the connection below.")
    return redirect("console:identity", tenant.slug)


@console_view
@require_POST
def tenant_policy_save(request, tenant):
    form = TenantPolicyForm(request.POST, instance=Tenant.objects.get(pk=tenant.pk), has_sso=oidc.provider_for_tenant(tenant) is not None)
    if not form.is_valid():
        return _identity_page(request, tenant, policy_form=form, status=400)
    changes = save_tenant_policy(tenant, actor=request.user, **{name: form.cleaned_data[name] for name in form.Meta.fields})
    messages.success(request, "Policy saved." if changes else "Nothing changed.")
    return redirect("console:identity", tenant.slug)


@console_view
@require_POST
def identity_provider_test(request, tenant):
    """Fetch the discovery document and keys afresh and say what is wrong. Nothing is saved."""
    provider = IdentityProvider.objects.filter(tenant=tenant).first() or oidc.provider_for_tenant(tenant)
    if provider is None:
        messages.error(request, "Save an identity provider first.")
        return redirect("console:identity", tenant.slug)
    try:
        test = {"ok": True, "notes": oidc.test_connection(provider)}
    except oidc.SignInRefused as exc:
        test = {"ok": False, "notes": [exc.message]}
    return _identity_page(request, tenant, test={**test, "issuer": provider.issuer})
