"""Filters of the session search and the events listing (pages). The API takes the same filters (audit/api.py)."""

from datetime import UTC, date, datetime, time, timedelta

from django import forms

from audit.queries import EventFilters, SessionFilters, person_in_tenant
from audit.search import MAX_QUERY_LENGTH, MIN_QUERY_LENGTH
from clusters.models import Cluster
from terminal.models import TerminalSession


def day_start(day: date | None) -> datetime | None:
    return datetime.combine(day, time.min, tzinfo=UTC) if day else None


def day_after(day: date | None) -> datetime | None:
    """The end of an inclusive "to" date: the next day's midnight (UTC, the portal's time zone)."""
    return day_start(day + timedelta(days=1)) if day else None


class _DateRange(forms.Form):
    since = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self):
        cleaned = super().clean()
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and since > until:
            self.add_error("until", "The end of the range is before its start.")
        return cleaned


class SessionSearchForm(_DateRange):
    """Text, person (tenant admins only), cluster, time range and end reason."""

    q = forms.CharField(required=False, label="Text", max_length=MAX_QUERY_LENGTH, strip=False,
                        widget=forms.TextInput(attrs={"type": "search", "placeholder": "rm -rf, --mem=, a file name…",
                                                      "autocomplete": "off", "spellcheck": "false"}))
    person = forms.CharField(required=False, label="Person", widget=forms.TextInput(attrs={
        "list": "people", "placeholder": "email", "autocomplete": "off"}))
    cluster = forms.ModelChoiceField(queryset=Cluster.objects.none(), required=False, empty_label="any")
    end_reason = forms.ChoiceField(required=False, label="End reason", choices=[("", "any"), *TerminalSession.EndReason.choices])

    def __init__(self, *args, tenant, everyone: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.tenant = tenant
        self.fields["cluster"].queryset = Cluster.objects.filter(tenant=tenant).order_by("name")
        if not everyone:
            del self.fields["person"]
        self.person_id = None

    def clean_q(self):
        text = self.cleaned_data["q"]
        if text.strip() and len(text.strip()) < MIN_QUERY_LENGTH:
            raise forms.ValidationError(f"Search for at least {MIN_QUERY_LENGTH} characters.")
        return text if text.strip() else ""

    def clean_person(self):
        email = self.cleaned_data["person"].strip()
        if email:
            self.person_id = person_in_tenant(self.tenant, email)
            if self.person_id is None:
                raise forms.ValidationError(f"No one with this email in {self.tenant.name}.")
        return email

    def session_filters(self) -> SessionFilters:
        data = self.cleaned_data
        return SessionFilters(person_id=self.person_id, cluster_id=data["cluster"].pk if data.get("cluster") else None,
                              since=day_start(data.get("since")), until=day_after(data.get("until")),
                              end_reason=data.get("end_reason") or "")


class EventFilterForm(_DateRange):
    action = forms.CharField(required=False, label="Action", widget=forms.TextInput(attrs={
        "placeholder": "job.submit or terminal.*"}), help_text="An action, or its start followed by * or a dot.")
    actor = forms.CharField(required=False, label="Actor email contains")
    target = forms.CharField(required=False, label="Target", widget=forms.TextInput(attrs={"placeholder": "type:id or id"}))

    field_order = ["action", "actor", "target", "since", "until"]

    def __init__(self, *args, everyone: bool, **kwargs):
        super().__init__(*args, **kwargs)
        if not everyone:  # a member sees only what they did
            del self.fields["actor"]

    def event_filters(self) -> EventFilters:
        data = self.cleaned_data
        return EventFilters(action=data["action"].strip(), actor=data.get("actor", "").strip(), target=data["target"].strip(),
                            since=day_start(data.get("since")), until=day_after(data.get("until")))
