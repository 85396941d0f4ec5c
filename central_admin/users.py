"""Users in the admin, with the devices each may see."""

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from core.models import DeviceAccess, User


class UserDeviceInline(admin.TabularInline):
    model = DeviceAccess
    extra = 0
    autocomplete_fields = ("device",)
    verbose_name = "device access"
    verbose_name_plural = "devices this user may see"


@admin.register(User)
class FleetUserAdmin(UserAdmin):
    inlines = (UserDeviceInline,)
