"""Forms of the tenant admin console. Validation only: every change goes through a write path."""

import json
import posixpath
import re

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError

from accounts.access import AccessError, PosixPlan, name_refusal, plan_posix_identity
from accounts.models import AccessRule, IdentityProvider, Membership, Tenant, User
from accounts.oidc import environment_provider
from clusters import aws
from clusters.models import Cluster, posix_username_validator

# --- durations: entered with a unit, never as bare seconds -----------------------------------------

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_WORDS = {"day": "d", "days": "d", "hour": "h", "hours": "h", "hr": "h", "hrs": "h", "min": "m", "mins": "m",
          "minute": "m", "minutes": "m", "sec": "s", "secs": "s", "second": "s", "seconds": "s"}
_PART = re.compile(r"(\d+)\s*([a-z]+)")
# Slurm's time formats: M:S, H:M:S, D-H, D-H:M, D-H:M:S.
_CLOCK = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d{1,2}))?(?::(\d{1,2}))?$")


def parse_duration(text: str) -> int:
    """`20m`, `12h`, `1h 30m`, `90 minutes`, `2d`, or Slurm's `1-00:00:00`, `1:30:00`, `20:00` → seconds."""
    text = text.strip().lower()
    clock = _CLOCK.match(text)
    if clock and (clock.group(1) or clock.group(3)):
        days, first, second, third = (int(g) if g else 0 for g in clock.groups())
        if clock.group(1) or clock.group(4):  # D-H[:M[:S]] or H:M:S
            return days * 86400 + first * 3600 + second * 60 + third
        return first * 60 + second  # M:S
    parts = _PART.findall(text)
    if not parts or _PART.sub("", text).strip(" ,") or re.fullmatch(r"\d+", text):
        raise ValidationError("Give a duration with its unit, such as 20m, 12h, 1h 30m or 1-00:00:00.")
    total = 0
    for number, unit in parts:
        unit = _WORDS.get(unit, unit)
        if unit not in _UNITS:
            raise ValidationError(f"Unknown unit {unit!r}: use d, h, m or s.")
        total += int(number) * _UNITS[unit]
    return total


def format_duration(seconds: int | None) -> str:
    """Seconds as the form shows them: `12h`, `20m`, `1h 30m`."""
    if seconds is None or seconds == "":
        return ""
    seconds = int(seconds)
    out = []
    for unit, size in _UNITS.items():
        count, seconds = divmod(seconds, size)
        if count:
            out.append(f"{count}{unit}")
    return " ".join(out) or "0s"


class DurationInput(forms.TextInput):
    def format_value(self, value):
        return format_duration(value) if isinstance(value, int) else value


class DurationField(forms.Field):
    widget = DurationInput

    def __init__(self, *, min_seconds: int = 1, **kwargs):
        self.min_seconds = min_seconds
        super().__init__(**kwargs)

    def to_python(self, value):
        if value in (None, ""):
            return None
        if isinstance(value, int):
            return value
        seconds = parse_duration(str(value))
        if seconds < self.min_seconds:
            raise ValidationError(f"At least {format_duration(self.min_seconds)}.")
        return seconds


def json_object(text: str, example: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValidationError(f"Not valid JSON: {exc}.") from None
    if not isinstance(value, dict):
        raise ValidationError(f"Give a JSON object, {example}.")
    return value


def split_words(text: str) -> list[str]:
    return [w for w in re.split(r"[\s,]+", text or "") if w]


# --- people -----------------------------------------------------------------------------------------


class PeopleFilterForm(forms.Form):
    q = forms.CharField(required=False, label="Search", widget=forms.TextInput(attrs={"placeholder": "email, name or POSIX name"}))
    status = forms.ChoiceField(required=False, choices=[("", "any"), *Membership.Status.choices])


class ReasonForm(forms.Form):
    reason = forms.CharField(max_length=500, widget=forms.Textarea(attrs={"rows": 2}),
                             help_text="Written to the audit trail and shown on the person's page.")


class OptionalReasonForm(ReasonForm):
    reason = forms.CharField(max_length=500, required=False, widget=forms.Textarea(attrs={"rows": 2}))


def _cluster_choices(tenant):
    return Cluster.objects.filter(tenant=tenant).order_by("name")


class AddPersonForm(forms.Form):
    email = forms.EmailField()
    full_name = forms.CharField(max_length=200, required=False)
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.MEMBER)
    clusters = forms.ModelMultipleChoiceField(queryset=Cluster.objects.none(), required=False, widget=forms.CheckboxSelectMultiple)
    posix_name = forms.CharField(max_length=32, required=False, label="POSIX name",
                                 help_text="Empty: made from the email the usual way. A name you give is checked by the same "
                                           "rules (reserved and system names, names of others in the tenant).")
    reason = forms.CharField(max_length=500, required=False)

    def __init__(self, *args, tenant: Tenant, **kwargs):
        super().__init__(*args, **kwargs)
        self.tenant = tenant
        self.fields["clusters"].queryset = _cluster_choices(tenant)
        self.plan: PosixPlan | None = None

    def clean_email(self):
        return self.cleaned_data["email"].strip().lower()

    def clean(self):
        cleaned = super().clean()
        email = cleaned.get("email")
        if not email:
            return cleaned
        user = User.objects.filter(email__iexact=email).first()
        membership = Membership.objects.filter(tenant=self.tenant, user=user).first() if user else None
        if membership is not None:
            raise ValidationError(f"{email} is already in {self.tenant.name} ({membership.get_status_display().lower()}): "
                                  "open their page to change their access.")
        wanted = cleaned.get("posix_name")
        try:
            plan = plan_posix_identity(self.tenant, user=user, claims={"email": email})
        except AccessError as exc:
            if not wanted:
                self.add_error("posix_name", str(exc))
                return cleaned
            plan = None
        if wanted:
            if plan is not None and plan.existing and plan.username != wanted:
                self.add_error("posix_name", f"{email} already has the POSIX name {plan.username!r} in this tenant; it is kept.")
                return cleaned
            if plan is None or plan.username != wanted:
                plan = self._override(wanted)
        self.plan = plan
        return cleaned

    def _override(self, wanted: str) -> PosixPlan | None:
        try:
            posix_username_validator(wanted)
        except ValidationError as exc:
            self.add_error("posix_name", exc)
            return None
        local = Cluster.objects.filter(tenant=self.tenant, backend=Cluster.Backend.LOCAL).exists()
        refusal = name_refusal(wanted, self.tenant, local_head_node=local)
        if refusal:
            self.add_error("posix_name", f"{refusal[0].upper()}{refusal[1:]}.")
            return None
        return PosixPlan(wanted, None, existing=False, notes=["chosen by an administrator"])


# --- clusters ---------------------------------------------------------------------------------------


class ClusterForm(forms.ModelForm):
    backend_settings = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 6, "class": "mono"}),
                                       help_text="A JSON object. SSM: region, instance_id, role_arn and the optional keys "
                                                 "of docs/configuration.md. The local backend takes none.")
    idle_timeout = DurationField(help_text="Without input for this long, a terminal session ends (e.g. 20m).")
    max_session_duration = DurationField(help_text="A terminal session lasts at most this long (e.g. 12h).")
    poll_interval = DurationField(min_seconds=2, help_text="Between two polls of the queue (e.g. 10s).")
    shared_roots = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}),
                                   help_text="One absolute directory a line, besides the home directory, where job scripts "
                                             "and working directories may be (e.g. /fsx).")

    class Meta:
        model = Cluster
        fields = ["name", "slug", "backend", "backend_settings", "idle_timeout", "max_session_duration", "home_template",
                  "shared_roots", "poll_posix_username", "poll_uid", "poll_interval", "slurm_account"]
        labels = {"poll_posix_username": "Poll user (POSIX name)", "poll_uid": "Poll user's uid", "slurm_account": "Slurm account"}

    def __init__(self, *args, tenant: Tenant, **kwargs):
        super().__init__(*args, **kwargs)
        self.tenant = tenant
        if self.instance.pk:
            self.fields["slug"].disabled = True
            self.fields["slug"].help_text = "Part of every URL of the cluster; it does not change."
        if not self.is_bound:
            self.initial["backend_settings"] = json.dumps(self.instance.backend_settings or {}, indent=2)
            self.initial["shared_roots"] = "\n".join(self.instance.shared_roots or [])

    def clean_slug(self):
        slug = self.cleaned_data["slug"]
        if not self.instance.pk and Cluster.objects.filter(tenant=self.tenant, slug=slug).exists():
            raise ValidationError(f"{self.tenant.name} already has a cluster {slug!r}.")
        return slug

    def clean_backend_settings(self):
        return json_object(self.cleaned_data["backend_settings"].strip() or "{}", 'such as {"region": "eu-west-1", …}')

    def clean_shared_roots(self):
        roots = []
        for line in self.cleaned_data["shared_roots"].splitlines():
            root = line.strip()
            if not root:
                continue
            if not root.startswith("/") or posixpath.normpath(root) != root or root == "/":
                raise ValidationError(f"{root!r} is not a normalised absolute directory (and not / itself).")
            roots.append(root)
        return roots

    def clean(self):
        cleaned = super().clean()
        backend, raw = cleaned.get("backend"), cleaned.get("backend_settings")
        if backend == Cluster.Backend.SSM and raw is not None:
            probe = Cluster(tenant=self.tenant, slug=cleaned.get("slug") or self.instance.slug, backend=backend, backend_settings=raw)
            try:
                aws.ssm_settings(probe)
            except aws.AwsError as exc:
                self.add_error("backend_settings", str(exc))
        elif backend == Cluster.Backend.LOCAL and raw:
            self.add_error("backend_settings", "The local backend takes no settings: leave this empty ({}).")
        name, uid = cleaned.get("poll_posix_username"), cleaned.get("poll_uid")
        if bool(name) != (uid is not None):
            self.add_error("poll_uid", "Give the poll user's POSIX name and uid together, or neither (no polling).")
        elif name and (name == "root" or uid < settings.TERMINAL_MIN_UID):
            self.add_error("poll_uid", f"The poller never runs as root or a system user (uid below {settings.TERMINAL_MIN_UID}).")
        return cleaned


# --- access rules -----------------------------------------------------------------------------------


class AccessRuleForm(forms.ModelForm):
    clusters = forms.ModelMultipleChoiceField(queryset=Cluster.objects.none(), required=False, widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = AccessRule
        fields = ["group", "role", "clusters"]

    def __init__(self, *args, tenant: Tenant, **kwargs):
        super().__init__(*args, **kwargs)
        self.tenant = tenant
        self.fields["clusters"].queryset = _cluster_choices(tenant)

    def clean_group(self):
        group = self.cleaned_data["group"].strip()
        if AccessRule.objects.filter(tenant=self.tenant, group=group).exclude(pk=self.instance.pk).exists():
            raise ValidationError(f"There is already a rule for the group {group!r}.")
        return group


# --- identity provider and policy -------------------------------------------------------------------

_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_CLAIM = re.compile(r"^[A-Za-z_][A-Za-z0-9_:./-]{0,99}$")


class IdentityProviderForm(forms.ModelForm):
    client_secret = forms.CharField(required=False, strip=True, widget=forms.PasswordInput(render_value=False),
                                    help_text="Write-only. Leave empty to keep the stored secret.")
    email_domains = forms.CharField(required=False, help_text="Email domains whose people sign in here, separated by spaces "
                                                              "or commas (e.g. example.com).")

    issuer = forms.URLField(max_length=500, assume_scheme="https",
                            help_text="The issuer URL, exactly as the IdP names itself; its /.well-known/openid-configuration must answer.")

    class Meta:
        model = IdentityProvider
        fields = ["name", "issuer", "client_id", "client_secret", "scopes", "groups_claim", "posix_name_claim", "email_domains", "enabled"]
        labels = {"posix_name_claim": "POSIX name claim", "client_id": "Client ID"}
        help_texts = {"name": "Shown on the sign-in button: “Sign in with …”."}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.is_bound:
            self.initial["email_domains"] = " ".join(self.instance.email_domains or [])
        if self.instance.pk and self.instance.client_secret_sealed:
            self.fields["client_secret"].help_text = "Stored (not shown). Leave empty to keep it; type a new one to replace it."

    def clean_client_secret(self):
        secret = self.cleaned_data["client_secret"]
        if not secret and not (self.instance.pk and self.instance.client_secret_sealed):
            raise ValidationError("The client secret the IdP gave for this application is needed.")
        return secret

    def clean_scopes(self):
        scopes = split_words(self.cleaned_data["scopes"])
        if "openid" not in scopes:
            raise ValidationError("The scopes must include openid.")
        return " ".join(scopes)

    def clean_groups_claim(self):
        return self._claim("groups_claim", required=True)

    def clean_posix_name_claim(self):
        return self._claim("posix_name_claim", required=False)

    def _claim(self, name: str, *, required: bool) -> str:
        value = self.cleaned_data[name].strip()
        if (value or required) and not _CLAIM.match(value):
            raise ValidationError("A claim name: letters, digits and _ : . / -, starting with a letter or _.")
        return value

    def clean_email_domains(self):
        domains = sorted({d.lower().lstrip("@") for d in split_words(self.cleaned_data["email_domains"])})
        bad = [d for d in domains if not _DOMAIN.match(d)]
        if bad:
            raise ValidationError(f"Not a domain: {', '.join(bad)}.")
        others = list(IdentityProvider.objects.exclude(tenant=self.instance.tenant_id))
        env = environment_provider()
        if env is not None and env.tenant_id != self.instance.tenant_id:
            others.append(env)
        taken = sorted({d.lower() for p in others for d in p.email_domains if d.lower() in domains})
        if taken:  # the sign-in picks the IdP by the email's domain: one tenant per domain
            raise ValidationError(f"Already used by another tenant's identity provider: {', '.join(taken)}.")
        return domains


class TenantPolicyForm(forms.ModelForm):
    class Meta:
        model = Tenant
        fields = ["local_signin_enabled", "uid_range_start", "uid_range_end", "offboard_kill_processes", "offboard_cancel_jobs",
                  "recording_retention_days"]
        labels = {"local_signin_enabled": "Local password sign-in", "uid_range_start": "First uid", "uid_range_end": "Last uid",
                  "offboard_kill_processes": "Offboarding ends processes", "offboard_cancel_jobs": "Offboarding cancels jobs",
                  "recording_retention_days": "Keep session recordings (days)"}

    def __init__(self, *args, has_sso: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.has_sso = has_sso
        self.fields["recording_retention_days"].required = False  # left empty: unchanged

    def clean_recording_retention_days(self):
        days = self.cleaned_data["recording_retention_days"]
        return self.instance.recording_retention_days if days is None else days

    def clean_uid_range_start(self):
        start = self.cleaned_data["uid_range_start"]
        if start < settings.TERMINAL_MIN_UID:
            raise ValidationError(f"uids below {settings.TERMINAL_MIN_UID} are system accounts.")
        return start

    def clean_local_signin_enabled(self):
        enabled = self.cleaned_data["local_signin_enabled"]
        if not enabled and not self.has_sso:
            raise ValidationError("Set up and enable an identity provider first: without either, nobody could sign in.")
        return enabled


# --- mapping preview --------------------------------------------------------------------------------


class PreviewForm(forms.Form):
    person = forms.ModelChoiceField(queryset=User.objects.none(), required=False, empty_label="—",
                                    help_text="Their groups from the last sign-in, and their POSIX identity.")
    claims = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 8, "class": "mono",
                                                                          "placeholder": '{"email": "jsmith@example.com", "groups": ["hpc-users"]}'}),
                             help_text="Or paste the claims an IdP would send (a JSON object).")

    def __init__(self, *args, tenant: Tenant, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["person"].queryset = User.objects.filter(memberships__tenant=tenant).order_by("email")

    def clean_claims(self):
        text = self.cleaned_data["claims"].strip()
        return json_object(text, 'such as {"email": "jsmith@example.com", "groups": ["hpc-users"]}') if text else None

    def clean(self):
        cleaned = super().clean()
        if not self.errors and (cleaned.get("person") is None) == (cleaned.get("claims") is None):
            raise ValidationError("Pick a person or paste claims (one of the two).")
        return cleaned
