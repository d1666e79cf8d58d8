from django.contrib import admin

from terminal.models import TerminalSession


@admin.register(TerminalSession)
class TerminalSessionAdmin(admin.ModelAdmin):
    """Read-only: sessions are written by terminal.actions only."""

    list_display = ["started_at", "user", "cluster", "posix_username", "ended_at", "end_reason", "bytes_out"]
    list_filter = ["end_reason", "cluster"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
