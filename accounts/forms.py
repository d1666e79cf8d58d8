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
