"""Devices in the admin: the cross-shard list, and a page per device with its actions."""

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import URLPattern, path

from central_admin import device_actions
from central_admin.device_list import (
    DeviceChangeList,
    alerts_column,
    last_seen_column,
    latest_column,
    shard_column,
    state_column,
)
from central_admin.device_page import device_context
from central_admin.filters import OnlineFilter, OwnerFilter, ShardFilter
from central_admin.forms import CommandForm
from core.access import may_command
from core.models import AlertRule, Device, DeviceAccess, MoveJob


class DeviceAccessInline(admin.TabularInline):
    model = DeviceAccess
    extra = 0
    autocomplete_fields = ("user",)
    verbose_name_plural = "users who may see this device"


class AlertRuleInline(admin.TabularInline):
    model = AlertRule
    extra = 0
    fields = ("metric", "kind", "threshold", "window_minutes", "severity", "enabled")
    verbose_name_plural = "alert rules (checked on every new minute of readings)"


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "serial",
        "name",
        shard_column,
        state_column,
        last_seen_column,
        latest_column,
        alerts_column,
        "is_active",
    )
    list_display_links = ("id", "serial")
    list_filter = (ShardFilter, OnlineFilter, "is_active", OwnerFilter)
    search_fields = ("serial", "name")
    list_select_related = ("placement",)
    list_per_page = 100
    # Facet counts would ask every shard once per filter choice.
    show_facets = admin.ShowFacets.NEVER
    # Row links are plain change URLs (no ?_changelist_filters=...), as the browser tests expect.
    preserve_filters = False
    readonly_fields = ("created_at",)
    inlines = (DeviceAccessInline, AlertRuleInline)
    change_form_template = "central_admin/device_change_form.html"
    actions = ("deactivate_devices", "activate_devices")

    class Media:
        css = {"all": ("central_admin/fleet.css",)}

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type:
        return DeviceChangeList

    @admin.action(
        description="Deactivate selected devices (their tokens stop working)",
        permissions=["change"],
    )
    def deactivate_devices(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = queryset.update(is_active=False)  # forgets cached credentials on commit
        self.message_user(request, f"Deactivated {count} device(s); they are refused within 2 s.")

    @admin.action(description="Activate selected devices", permissions=["change"])
    def activate_devices(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = queryset.update(is_active=True)
        self.message_user(request, f"Activated {count} device(s).")

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple:
        """A device's finished move history goes with it, though move jobs are read-only.

        Moves still in flight protect the device (core.models.protect_moves_in_flight).
        """
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        perms_needed = set(perms_needed) - {str(MoveJob._meta.verbose_name)}
        return deleted, counts, perms_needed, protected

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        actions = [
            ("rotate", "<int:device_id>/rotate/", device_actions.rotate),
            ("revoke", "<int:device_id>/revoke/", device_actions.revoke),
            ("command", "<int:device_id>/commands/", device_actions.command_create),
            (
                "command_cancel",
                "<int:device_id>/commands/<int:command_id>/cancel/",
                device_actions.command_cancel,
            ),
            (
                "alert_ack",
                "<int:device_id>/alerts/<int:alert_id>/acknowledge/",
                device_actions.alert_acknowledge,
            ),
            ("move", "<int:device_id>/move/", device_actions.move),
        ]
        mine = [
            path(route, wrap(view), name=f"core_device_{name}") for name, route, view in actions
        ]
        return mine + super().get_urls()

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict | None = None,
    ) -> HttpResponse:
        device = self.get_object(request, object_id)
        if device is None:
            raise Http404(f"no device {object_id}")
        if self.has_view_or_change_permission(request, device):
            extra_context = {
                **(extra_context or {}),
                **device_context(device),
                "command_form": CommandForm(),
                "can_command": may_command(request.user, device),
            }
        return super().change_view(request, object_id, form_url, extra_context)
