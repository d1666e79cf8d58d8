"""The admin console's Okta section: the connection, the event hook's secret, Run now, the runs and the deliveries."""

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from accounts.console.common import console_view, page
from okta import services
from okta.models import HookEvent, OktaConnection, SyncRun, clean_org_url

RUNS_SHOWN = 10
EVENTS_SHOWN = 20
DRIFT_SHOWN = 50


class OktaConnectionForm(forms.ModelForm):
    org_url = forms.URLField(max_length=300, assume_scheme="https", label="Org URL",
                             help_text="Your Okta org, such as https://acme.okta.com (not the admin console's -admin URL).")
    api_token = forms.CharField(required=False, strip=True, widget=forms.PasswordInput(render_value=False),
                                help_text="Write-only. An API token of an admin who may read groups and users (a read-only "
                                          "admin is enough). Leave empty to keep the stored one.")
    private_key = forms.CharField(required=False, strip=True, widget=forms.Textarea(attrs={"rows": 3, "autocomplete": "off"}),
                                  help_text="Write-only. The service app's private key (PEM, RSA or EC); its public key is "
                                            "registered at the app in Okta. Leave empty to keep the stored one.")

    class Meta:
        model = OktaConnection
        fields = ["org_url", "auth_method", "api_token", "client_id", "private_key", "key_id", "enabled", "dry_run", "max_removals"]
        labels = {"org_url": "Org URL", "client_id": "Client ID", "key_id": "Key ID", "max_removals": "Removal limit per run"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.api_token_sealed:
            self.fields["api_token"].help_text = "Stored (not shown). Leave empty to keep it; type a new one to replace it."
        if self.instance.private_key_sealed:
            self.fields["private_key"].help_text = "Stored (not shown). Leave empty to keep it; paste a new one to replace it."

    def clean_org_url(self):
        return clean_org_url(self.cleaned_data["org_url"])

    def clean_private_key(self):
        pem = self.cleaned_data["private_key"]
        if pem:
            from cryptography.hazmat.primitives.asymmetric import ec, rsa
            from cryptography.hazmat.primitives.serialization import load_pem_private_key
            try:
                key = load_pem_private_key(pem.encode(), password=None)
            except (ValueError, TypeError):
                raise ValidationError("Not an unencrypted PEM private key.") from None
            if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
                raise ValidationError("Use an RSA or EC key (Okta's service apps accept those).")
        return pem

    def clean(self):
        data = super().clean()
        if data.get("auth_method") == OktaConnection.Auth.OAUTH:
            if not data.get("client_id"):
                self.add_error("client_id", "The service app's client ID is needed.")
            if not data.get("private_key") and not self.instance.private_key_sealed:
                self.add_error("private_key", "The service app's private key is needed.")
        elif not data.get("api_token") and not self.instance.api_token_sealed:
            self.add_error("api_token", "An API token is needed.")
        return data


def _connection(tenant) -> OktaConnection | None:
    return OktaConnection.objects.filter(tenant=tenant).first()


def _okta_page(request, tenant, *, form=None, new_secret: str = "", status: int = 200):
    connection = _connection(tenant)
    if form is None:
        form = OktaConnectionForm(instance=connection or OktaConnection(tenant=tenant))
    runs = list(SyncRun.objects.filter(tenant=tenant)[:RUNS_SHOWN])
    last = next((r for r in runs if r.status != SyncRun.Status.RUNNING), None)
    drift = [c for c in last.changes if not c.get("applied")][:DRIFT_SHOWN] if last is not None else []
    return page(request, tenant, "okta", "okta.html", {
        "connection": connection, "form": form, "new_secret": new_secret, "runs": runs, "last": last, "drift": drift,
        "running": any(r.status == SyncRun.Status.RUNNING for r in runs),
        "events": HookEvent.objects.filter(tenant=tenant)[:EVENTS_SHOWN],
        "hook_url": request.build_absolute_uri(reverse("okta:event_hook", args=[tenant.slug])),
    }, status=status)


@console_view
def okta(request, tenant):
    return _okta_page(request, tenant)


@console_view
@require_POST
def okta_save(request, tenant):
    connection = _connection(tenant) or OktaConnection(tenant=tenant)
    form = OktaConnectionForm(request.POST, instance=connection)
    if not form.is_valid():
        return _okta_page(request, tenant, form=form, status=400)
    services.save_connection(form.save(commit=False), actor=request.user, api_token=form.cleaned_data["api_token"],
                             private_key=form.cleaned_data["private_key"])
    messages.success(request, "Okta connection saved. A dry run shows what the reconciliation would change.")
    return redirect("console:okta", tenant.slug)


@console_view
@require_POST
def okta_hook_secret(request, tenant):
    connection = _connection(tenant)
    if connection is None:
        messages.error(request, "Save the Okta connection first.")
        return redirect("console:okta", tenant.slug)
    if request.POST.get("action") == "clear":
        services.clear_hook_secret(connection, actor=request.user)
        messages.success(request, "The event hook is off: every delivery is refused until you make a new secret.")
        return redirect("console:okta", tenant.slug)
    secret = services.new_hook_secret(connection, actor=request.user)
    return _okta_page(request, tenant, new_secret=secret)  # shown once, on this page only (never in a message or the session)


@console_view
@require_POST
def okta_run(request, tenant):
    from okta.tasks import reconcile_tenant
    connection = _connection(tenant)
    if connection is None:
        messages.error(request, "Save the Okta connection first.")
        return redirect("console:okta", tenant.slug)
    dry_run = request.POST.get("mode") != "apply"
    try:
        reconcile_tenant.delay(connection.pk, dry_run=dry_run, trigger=SyncRun.Trigger.ADMIN, actor_id=request.user.pk)
    except Exception as exc:  # the broker is away
        messages.error(request, f"The run could not be queued ({type(exc).__name__}); is the Celery broker up?")
    else:
        messages.success(request, f"{'A dry run' if dry_run else 'A reconciliation'} was queued; it appears below when a worker "
                                  "takes it (reload the page).")
    return redirect("console:okta", tenant.slug)


@console_view
def okta_run_detail(request, tenant, run_id):
    run = get_object_or_404(SyncRun, tenant=tenant, pk=run_id)
    return page(request, tenant, "okta", "okta_run.html", {"run": run})
