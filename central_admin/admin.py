"""Directory models in the Django admin; the cross-shard views come with the web issue."""

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from core.models import Device, DeviceAccess, Placement, Shard, User

admin.site.register(User, UserAdmin)


@admin.register(Shard)
class ShardAdmin(admin.ModelAdmin):
    list_display = ("alias", "number", "state", "weight", "host", "port", "db_name")
    list_filter = ("state",)
    readonly_fields = ("number", "created_at", "updated_at")
    exclude = ("db_password",)


class DeviceAccessInline(admin.TabularInline):
    model = DeviceAccess
    extra = 0
    autocomplete_fields = ("user",)


class PlacementInline(admin.StackedInline):
    model = Placement
    can_delete = False
    readonly_fields = ("shard", "pinned", "epoch", "updated_at")


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    list_display = ("id", "serial", "name", "shard", "is_active", "created_at")
    list_filter = ("placement__shard", "is_active")
    search_fields = ("serial", "name")
    list_select_related = ("placement",)
    inlines = (PlacementInline, DeviceAccessInline)

    @admin.display(ordering="placement__shard")
    def shard(self, device: Device) -> str:
        return device.placement.shard_id
