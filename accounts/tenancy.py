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
        return self.filter(**{f"{self.tenant_path}__memberships__user": user}).distinct()


def scoped_queryset(path: str) -> type[TenantScopedQuerySet]:
    return type(f"TenantScopedQuerySet_{path}", (TenantScopedQuerySet,), {"tenant_path": path})


def get_visible_or_404(queryset: TenantScopedQuerySet, user, **lookup):
    try:
        return queryset.visible_to(user).get(**lookup)
    except queryset.model.DoesNotExist:
        raise Http404(f"No {queryset.model._meta.verbose_name} matches the given query.") from None
