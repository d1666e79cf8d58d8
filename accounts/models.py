"""Users (email login), tenants and tenant memberships."""

from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

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

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    def __str__(self):
        return self.email


class Tenant(models.Model):
    """An organisation (team, department, customer) with its own clusters, people and audit trail."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=50, unique=True, validators=[slug_validator])
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return self.name


class Membership(models.Model):
    """A user's role in a tenant."""

    class Role(models.TextChoices):
        ADMIN = "admin", "Admin"
        MEMBER = "member", "Member"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
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
