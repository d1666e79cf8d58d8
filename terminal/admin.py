from django.contrib import admin

from terminal.models import SessionLog, TerminalSession


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(TerminalSession)
class TerminalSessionAdmin(ReadOnlyAdmin):
    """Read-only: sessions are written by terminal.actions only."""

    list_display = ["started_at", "user", "cluster", "posix_username", "ended_at", "end_reason", "bytes_out"]
    list_filter = ["end_reason", "cluster"]


@admin.register(SessionLog)
class SessionLogAdmin(ReadOnlyAdmin):
    """Read-only: where each session's recording and SSM log are (terminal/recordings.py writes these)."""

    list_display = ["session", "kind", "state", "size", "attempts", "last_error", "index_state", "updated_at"]
    list_filter = ["kind", "state", "index_state"]
    list_select_related = ["session"]
