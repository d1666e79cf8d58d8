"""SCIM 2.0 provisioning (docs/scim.md): a tenant's bearer tokens and the IdP's view of its people and groups.

The portal's own state (memberships, cluster accounts) is never written here: a SCIM write changes these
rows, then accounts/lifecycle.py applies what the person's groups give (scim/service.py).
"""

import uuid

from django.conf import settings
from django.db import models


class ScimToken(models.Model):
    """A tenant's SCIM bearer token: `cst_<prefix>_<secret>`. Only a SHA-256 of the secret is stored."""

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="scim_tokens")
    name = models.CharField(max_length=100, help_text="What uses it, e.g. \"Okta\"; audit events name SCIM writes by it.")
    prefix = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"{self.name} ({self.tenant.slug}, cst_{self.prefix}_…)"


class ScimUser(models.Model):
    """A person as the tenant's IdP provisioned them, linked to the portal user of the same email."""

    scim_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="scim_users")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="scim_identities")
    user_name = models.CharField(max_length=255)
    user_name_key = models.CharField(max_length=255, help_text="userName lowercased: unique in the tenant (not caseExact).")
    external_id = models.CharField(max_length=255, blank=True, db_index=True)
    display_name = models.CharField(max_length=255, blank=True)
    active = models.BooleanField(default=True)
    # The resource as the IdP sent it (name, emails, enterprise extension, …; never a password), without id,
    # meta and groups, which the portal computes.
    resource = models.JSONField(default=dict, blank=True)
    # The groups last applied through accounts.lifecycle.sync_groups; None until the first time, so a person
    # the IdP creates without groups does not lose the access they already had before their groups arrive.
    groups_applied = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "user_name_key"], name="scim_one_user_name_per_tenant"),
            models.UniqueConstraint(fields=["tenant", "user"], name="scim_one_identity_per_person_and_tenant"),
        ]

    def __str__(self):
        return f"{self.user_name} in {self.tenant_id} ({'active' if self.active else 'inactive'})"


class ScimGroup(models.Model):
    """A group the IdP pushed; its displayName is the group an access rule names (accounts.AccessRule.group)."""

    scim_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="scim_groups")
    display_name = models.CharField(max_length=255)
    display_name_key = models.CharField(max_length=255, help_text="displayName lowercased: unique in the tenant.")
    external_id = models.CharField(max_length=255, blank=True, db_index=True)
    members = models.ManyToManyField(ScimUser, through="ScimGroupMember", related_name="scim_groups")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [models.UniqueConstraint(fields=["tenant", "display_name_key"], name="scim_one_group_name_per_tenant")]

    def __str__(self):
        return f"{self.display_name} in {self.tenant_id}"


class ScimGroupMember(models.Model):
    group = models.ForeignKey(ScimGroup, on_delete=models.CASCADE, related_name="memberships")
    person = models.ForeignKey(ScimUser, on_delete=models.CASCADE, related_name="group_memberships")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["group", "person"], name="scim_one_membership_per_group")]

    def __str__(self):
        return f"{self.person_id} in {self.group_id}"
