from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render

from accounts.forms import EmailAuthenticationForm, PreferencesForm
from accounts.services import update_preferences


class LoginView(auth_views.LoginView):
    # The OIDC issue adds a "Sign in with <IdP>" button here; local accounts stay for the embedded default.
    form_class = EmailAuthenticationForm
    template_name = "registration/login.html"
    redirect_authenticated_user = True


@login_required
def preferences(request):
    form = PreferencesForm(request.POST or None, instance=request.user)
    if request.method == "POST" and form.is_valid():
        update_preferences(request.user, full_name=form.cleaned_data["full_name"], terminal_renderer=form.cleaned_data["terminal_renderer"])
        messages.success(request, "Preferences saved.")
        return redirect("accounts:preferences")
    return render(request, "accounts/preferences.html", {"form": form})
