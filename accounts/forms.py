from django import forms
from django.contrib.auth.forms import AuthenticationForm

from accounts.models import User


class EmailAuthenticationForm(AuthenticationForm):
    username = forms.EmailField(label="Email", widget=forms.EmailInput(attrs={"autofocus": True, "autocomplete": "email"}))

    def clean_username(self):
        return self.cleaned_data["username"].lower()


class PreferencesForm(forms.ModelForm):
    class Meta:
        model = User
        fields = ["full_name", "terminal_renderer"]
        labels = {"terminal_renderer": "Terminal renderer"}


class ApiTokenForm(forms.Form):
    name = forms.CharField(max_length=100, initial="cli")
    tenant = forms.ModelChoiceField(queryset=None, empty_label=None)
    days = forms.IntegerField(min_value=1, max_value=366, initial=90, label="Valid for (days)")

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        from accounts.models import Tenant

        self.fields["tenant"].queryset = Tenant.objects.filter(memberships__user=user).order_by("name")
