"""Move jobs and rebalance runs, read-only: they are written only by the movers."""

from django.contrib import admin
from django.http import HttpRequest

from core.models import MoveJob, Rebalance


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(MoveJob)
class MoveJobAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "device",
        "source",
        "target",
        "phase",
        "stall_ms",
        "requested_by",
        "created_at",
    )
    list_filter = ("phase", "source", "target")
    search_fields = ("device__serial",)
    list_select_related = ("device",)


@admin.register(Rebalance)
class RebalanceAdmin(ReadOnlyAdmin):
    list_display = ("id", "kind", "state", "cost", "created_at", "finished_at")
    list_filter = ("state",)
