from django.contrib import admin

from clusters.models import Cluster, ClusterAccount


class ClusterAccountInline(admin.TabularInline):
    model = ClusterAccount
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Cluster)
class ClusterAdmin(admin.ModelAdmin):
    list_display = ["name", "tenant", "slug", "backend", "idle_timeout", "max_session_duration"]
    list_filter = ["backend", "tenant"]
    inlines = [ClusterAccountInline]
