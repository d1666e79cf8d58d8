"""Users (email login), tenants and tenant memberships."""

from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.utils import timezone
from django.utils.crypto import salted_hmac

slug_validator = RegexValidator(r"^[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?$", "Use 1–50 lowercase letters, digits and dashes.")


class UserManager(BaseUserManager):
    use_in_migrations = True

    def create_user(self, email, password=None, **extra):
        if not email:
            raise ValueError("Users need an email address")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email, password=None, **extra):
        extra.update(is_staff=True, is_superuser=True)
        return self.create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """A person. Signs in with their email (local password) or, later, through OIDC."""

    class Renderer(models.TextChoices):
        AUTO = "auto", "Automatic (WebGL, DOM fallback)"
        DOM = "dom", "DOM (most compatible)"

    email = models.EmailField(unique=True)
    full_name = models.CharField(max_length=200, blank=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False, help_text="Can use the Django admin site.")
    date_joined = models.DateTimeField(default=timezone.now)
    terminal_renderer = models.CharField(max_length=8, choices=Renderer.choices, default=Renderer.AUTO)
    time_zone = models.CharField(max_length=64, blank=True,
                                 help_text="IANA time zone for times on pages; empty: the one the browser reports.")
    # Bumped to sign the person out of every web session at once (offboarding, suspension): Django
    # checks the session's auth hash on every request and WebSocket connect.
    session_generation = models.PositiveIntegerField(default=0)
    last_sign_in_at = models.DateTimeField(null=True, blank=True)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    def __str__(self):
        return self.email

    def get_session_auth_hash(self):
        return salted_hmac("clusterra.session", f"{self.password}:{self.session_generation}", algorithm="sha256").hexdigest()


class Tenant(models.Model):
    """An organisation (team, department, customer) with its own clusters, people and audit trail."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=50, unique=True, validators=[slug_validator])
    created_at = models.DateTimeField(auto_now_add=True)
    # Identity policy (accounts/access.py, accounts/lifecycle.py).
    local_signin_enabled = models.BooleanField(default=True, help_text="Members may sign in with a local password "
                                               "(the demo's way). Turn off once SSO works.")
    uid_range_start = models.PositiveIntegerField(default=20000, validators=[MinValueValidator(1000)],
                                                  help_text="First uid the portal allocates to new POSIX accounts.")
    uid_range_end = models.PositiveIntegerField(default=59999, help_text="Last uid the portal allocates.")
    offboard_kill_processes = models.BooleanField(default=True, help_text="Offboarding ends the person's processes on the head nodes.")
    offboard_cancel_jobs = models.BooleanField(default=False, help_text="Offboarding cancels the person's Slurm jobs.")
    recording_retention_days = models.PositiveIntegerField(
        default=365, validators=[MaxValueValidator(36500)],
        help_text="Session recordings and logs are deleted this many days after the session ended (0: kept forever).")

    def __str__(self):
        return self.name

    def clean(self):
        if self.uid_range_end <= self.uid_range_start:
            raise ValidationError({"uid_range_end": "The range must end after it starts."})


class Membership(models.Model):
    """A user's role in a tenant."""

    class Role(models.TextChoices):
        ADMIN = "admin", "Admin"
        MEMBER = "member", "Member"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"
        OFFBOARDED = "offboarded", "Offboarded"

    class Source(models.TextChoices):
        ADMIN = "admin", "An administrator"
        IDP = "idp", "The identity provider's groups"

    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    # Who decided the current status: an admin's offboarding is not undone by a sign-in whose groups
    # still grant access; an offboarding because the groups no longer do is undone when they do again.
    status_source = models.CharField(max_length=8, choices=Source.choices, default=Source.ADMIN)
    status_reason = models.CharField(max_length=500, blank=True)
    status_changed_at = models.DateTimeField(null=True, blank=True)
    idp_groups = models.JSONField(default=list, blank=True, help_text="The groups the IdP sent at the last sign-in or sync.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "user"], name="one_membership_per_tenant")]

    def __str__(self):
        return f"{self.user} in {self.tenant} ({self.role})"


class ApiToken(models.Model):
    """A personal API token: `ctk_<prefix>_<secret>`. Only a SHA-256 of the secret is stored."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"{self.name} ({self.user}, ctk_{self.prefix}_…)"

    @property
    def is_usable(self) -> bool:
        return self.revoked_at is None and self.expires_at > timezone.now() and self.user.is_active


class SigningKey(models.Model):
    """An RSA key the portal signs its AWS web-identity tokens with (accounts/issuer.py).

    The private key is stored encrypted with a key derived from SECRET_KEY; the public half is kept
    as a JWK so the JWKS never needs the private key. Exactly one key is `active` (signs new tokens);
    a retired key stays published until `expires_at`, when every token it signed has expired.
    """

    kid = models.CharField(max_length=64, unique=True)
    private_key_encrypted = models.TextField(help_text="PKCS#8 PEM, Fernet-encrypted with a key derived from SECRET_KEY.")
    public_jwk = models.JSONField()
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    retired_at = models.DateTimeField(null=True, blank=True, help_text="When a newer key took over signing.")
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Dropped from the JWKS after this.")

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["active"], condition=models.Q(active=True), name="one_active_signing_key")]

    def __str__(self):
        return f"{self.kid} ({'active' if self.active else 'retired'})"


class IdentityProvider(models.Model):
    """A tenant's OpenID Connect provider (Okta, Entra ID, Google, Cognito, …), found through discovery.

    The client secret is stored sealed (clusterra/sealed.py). A single-IdP install may instead set
    CLUSTERRA_OIDC_* in the environment (accounts/oidc.py builds an unsaved one from them).
    """

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="identity_provider")
    name = models.CharField(max_length=100, help_text="Shown on the sign-in button: \"Sign in with <name>\".")
    issuer = models.URLField(max_length=500, help_text="The issuer URL; <issuer>/.well-known/openid-configuration must answer.")
    client_id = models.CharField(max_length=255)
    client_secret_sealed = models.TextField(blank=True)
    scopes = models.CharField(max_length=255, default="openid email profile groups")
    groups_claim = models.CharField(max_length=100, default="groups", help_text="The claim that lists the person's groups.")
    posix_name_claim = models.CharField(max_length=100, blank=True, help_text="A claim that holds the POSIX name. "
                                        "Empty: the email's local part, lowercased and sanitised.")
    email_domains = models.JSONField(default=list, blank=True, help_text="Email domains that sign in through this IdP.")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    SECRET_PURPOSE = "oidc client secret"  # noqa: S105 (a key-derivation label, not a secret)

    def __str__(self):
        return f"{self.name} ({self.tenant.slug})"

    def clean(self):
        from urllib.parse import urlsplit
        parts = urlsplit(self.issuer or "")
        # The portal fetches this URL (discovery, keys, tokens): https, except an IdP on this machine (tests, demo).
        if parts.scheme != "https" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValidationError({"issuer": "The issuer must be an https:// URL (http only for an IdP on this machine)."})
        if parts.query or parts.fragment or parts.username:
            raise ValidationError({"issuer": "The issuer is a plain URL, without query, fragment or user."})

    @property
    def from_environment(self) -> bool:
        return self.pk is None

    def set_client_secret(self, secret: str) -> None:
        from clusterra import sealed
        self.client_secret_sealed = sealed.seal(secret, self.SECRET_PURPOSE) if secret else ""

    def client_secret(self) -> str:
        if getattr(self, "_plain_secret", None) is not None:  # an environment-defined provider
            return self._plain_secret
        if not self.client_secret_sealed:
            return ""
        from clusterra import sealed
        return sealed.unseal(self.client_secret_sealed, self.SECRET_PURPOSE)


class IdentityLink(models.Model):
    """Which person an IdP's subject is: (issuer, sub) is stable where emails change."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="identity_links")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="identity_links")
    issuer = models.CharField(max_length=500)
    subject = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)
    last_sign_in_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["issuer", "subject"], name="one_user_per_idp_subject")]

    def __str__(self):
        return f"{self.subject} at {self.issuer} → {self.user}"


class AccessRule(models.Model):
    """An IdP group gives a tenant role and the use of some clusters. Several rules may match one person:
    the strongest role wins and the clusters add up. Groups that no rule names grant nothing."""

    class Role(models.TextChoices):
        ADMIN = "admin", "Admin"
        MEMBER = "member", "Member"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="access_rules")
    group = models.CharField(max_length=255, help_text="The group's name exactly as the IdP sends it.")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    clusters = models.ManyToManyField("clusters.Cluster", blank=True, related_name="access_rules")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "group"], name="one_rule_per_group")]
        ordering = ["group"]

    def __str__(self):
        return f"{self.group} → {self.role}"
