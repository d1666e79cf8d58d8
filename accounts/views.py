from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from accounts.forms import ApiTokenForm, EmailAuthenticationForm, PreferencesForm
from accounts.models import ApiToken
from accounts.services import create_api_token, revoke_api_token, update_preferences


class LoginView(auth_views.LoginView):
    # The OIDC issue adds a "Sign in with <IdP>" button here; local accounts stay for the embedded default.
    form_class = EmailAuthenticationForm
    template_name = "registration/login.html"
    redirect_authenticated_user = True

    def get_context_data(self, **kwargs):
        from accounts.oidc import sign_in_choices
        # One IdP: its button. Several (tenants of a shared portal): only the email-or-organisation field,
        # so the page does not list every tenant.
        return {**super().get_context_data(**kwargs), "sso_providers": sign_in_choices()}

    def render_to_response(self, context, **kwargs):
        response = super().render_to_response(context, **kwargs)
        # "Continue with single sign-on" submits here and is redirected to the IdP: CSP's form-action
        # covers that redirect, so every enabled IdP's origin joins it on this page.
        from accounts.oidc import sign_in_origins
        origins = sign_in_origins()
        if origins:
            response._csp_update = {"form-action": origins}
        return response

    def form_invalid(self, form):
        response = super().form_invalid(form)
        if form.signin_lock is not None:  # accounts/throttle.py: too many failures for this email or address
            response.status_code = 429
            response["Retry-After"] = str(form.signin_lock.retry_after)
        return response


@login_required
def preferences(request):
    form = PreferencesForm(request.POST or None, instance=request.user)
    if request.method == "POST" and form.is_valid():
        update_preferences(request.user, full_name=form.cleaned_data["full_name"], terminal_renderer=form.cleaned_data["terminal_renderer"],
                           time_zone=form.cleaned_data["time_zone"])
        messages.success(request, "Preferences saved.")
        return redirect("accounts:preferences")
    return render(request, "accounts/preferences.html", {"form": form})


@login_required
def api_tokens(request):
    """Your personal API tokens: create one (shown once), see when each was used, revoke."""
    form = ApiTokenForm(request.POST or None, user=request.user)
    new_token = None
    if request.method == "POST" and form.is_valid():
        _token, new_token = create_api_token(user=request.user, tenant=form.cleaned_data["tenant"],
                                             name=form.cleaned_data["name"], days=form.cleaned_data["days"])
        form = ApiTokenForm(user=request.user)
    tokens = ApiToken.objects.filter(user=request.user).select_related("tenant").order_by("-created_at")
    return render(request, "accounts/api_tokens.html", {"form": form, "tokens": tokens, "new_token": new_token})


@login_required
@require_POST
def revoke_token(request, token_id):
    token = get_object_or_404(ApiToken, pk=token_id, user=request.user)
    revoke_api_token(token, actor=request.user)
    messages.success(request, f"Token {token.name} revoked.")
    return redirect("accounts:api_tokens")
