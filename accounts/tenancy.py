"""Tenant scoping, in one place.

Every model that belongs to a tenant uses TenantScopedQuerySet and names the path to its tenant.
Views and consumers fetch objects through `visible_to(user)`, so an object of another tenant simply
does not exist for them (a 404, never a 403 that would confirm it exists).
"""

from django.db import models
from django.http import Http404


class TenantScopedQuerySet(models.QuerySet):
    tenant_path = "tenant"  # overridden per model, e.g. "cluster__tenant"

    def in_tenant(self, tenant):
        return self.filter(**{self.tenant_path: tenant})

    def visible_to(self, user):
        if not getattr(user, "is_authenticated", False):
            return self.none()
        # One filter() call, so both conditions apply to the same membership row.
        return self.filter(**{f"{self.tenant_path}__memberships__user": user,
                              f"{self.tenant_path}__memberships__status": "active"}).distinct()


def scoped_queryset(path: str) -> type[TenantScopedQuerySet]:
    return type(f"TenantScopedQuerySet_{path}", (TenantScopedQuerySet,), {"tenant_path": path})


def active_memberships(user):
    """The user's memberships that give access now (not suspended, not offboarded)."""
    from accounts.models import Membership
    return Membership.objects.filter(user=user, status=Membership.Status.ACTIVE)


def is_tenant_admin(user, tenant) -> bool:
    from accounts.models import Membership
    return active_memberships(user).filter(tenant=tenant, role=Membership.Role.ADMIN).exists()


def administered_tenant_or_404(user, tenant_slug):
    """The tenant `user` administers; a 404 for members, outsiders and unknown slugs alike."""
    from accounts.models import Membership, Tenant
    if not getattr(user, "is_authenticated", False):
        raise Http404("No such tenant.")
    tenant = Tenant.objects.filter(slug=tenant_slug, memberships__user=user, memberships__status=Membership.Status.ACTIVE,
                                   memberships__role=Membership.Role.ADMIN).first()
    if tenant is None:
        raise Http404("No such tenant.")  # members learn no more than outsiders
    return tenant


def get_visible_or_404(queryset: TenantScopedQuerySet, user, **lookup):
    try:
        return queryset.visible_to(user).get(**lookup)
    except queryset.model.DoesNotExist:
        raise Http404(f"No {queryset.model._meta.verbose_name} matches the given query.") from None
