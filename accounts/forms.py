from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm

from accounts import throttle
from accounts.models import User
from accounts.services import record_password_sign_in
from accounts.tenancy import active_memberships
from clusterra import timezones


class ThrottledSignInMixin:
    """Password sign-in through accounts.throttle: a locked email or address is refused before the password
    is checked, with the same message whether or not the account exists; `signin_lock` is then set."""

    signin_lock = None

    def clean(self):
        username, password = self.cleaned_data.get("username"), self.cleaned_data.get("password")
        if username is None or not password:
            return super().clean()
        email, address = throttle.normalise_email(username), throttle.client_address(self.request)
        self.signin_lock = throttle.current_lock(throttle.LOGIN, email, address)
        if self.signin_lock is not None:
            record_password_sign_in(email=email, user=User.objects.filter(email=email).first(), client_address=address,
                                    reason="locked: too many failed sign-ins")
            raise forms.ValidationError(self.signin_lock.message, code="throttled")
        try:
            cleaned = super().clean()
        except forms.ValidationError as exc:
            if getattr(exc, "code", None) in ("invalid_login", "inactive"):
                throttle.record_failure(throttle.LOGIN, email, address)
            self._audit_refusal(email, address)
            raise
        throttle.record_success(throttle.LOGIN, email)
        record_password_sign_in(email=email, user=self.get_user(), client_address=address)
        return cleaned

    def _audit_refusal(self, email: str, address: str | None) -> None:
        """Why a password was refused, for the audit trail only (the page says the same thing in every case)."""
        from accounts.backends import password_sign_in_allowed

        user = User.objects.filter(email=email).first()
        if user is None:
            reason = "no account with this email"
        elif not user.is_active:
            reason = "account inactive"
        elif not password_sign_in_allowed(user):
            reason = "password sign-in is turned off for this person's tenants"
        else:
            reason = "wrong password"
        record_password_sign_in(email=email, user=user, client_address=address, reason=reason)


class AdminSignInForm(ThrottledSignInMixin, AdminAuthenticationForm):
    """The admin site's sign-in (accounts/admin.py), throttled like the portal's."""


class EmailAuthenticationForm(ThrottledSignInMixin, AuthenticationForm):
    username = forms.EmailField(label="Email", widget=forms.EmailInput(attrs={"autofocus": True, "autocomplete": "email"}))

    def clean_username(self):
        return self.cleaned_data["username"].lower()


class PreferencesForm(forms.ModelForm):
    class Meta:
        model = User
        fields = ["full_name", "terminal_renderer", "time_zone"]
        labels = {"terminal_renderer": "Terminal renderer", "time_zone": "Time zone"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["time_zone"].widget = forms.Select(choices=timezones.choices())

    def clean_time_zone(self):
        value = self.cleaned_data["time_zone"]
        if value and timezones.zone(value) is None:
            raise forms.ValidationError(f"{value!r} is not a time zone this server knows.")
        return value


class ApiTokenForm(forms.Form):
    name = forms.CharField(max_length=100, initial="cli")
    tenant = forms.ModelChoiceField(queryset=None, empty_label=None)
    days = forms.IntegerField(min_value=1, max_value=366, initial=90, label="Valid for (days)")

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        from accounts.models import Tenant

        self.fields["tenant"].queryset = Tenant.objects.filter(memberships__in=active_memberships(user)).order_by("name")
