"""Changelist filters for devices: by shard (directory), by online state (shards), by owner."""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from core.models import Shard, User
from routers.errors import FanOutError
from routers.registry import serving_shards
from shards.overview import online_device_ids


def reachable_online_ids(request: HttpRequest) -> set[int]:
    """Online devices on every shard that answers; a shard that does not is named, not fatal."""
    try:
        return online_device_ids()
    except FanOutError as exc:
        down = sorted(exc.errors)
        messages.warning(request, f"Unreachable, left out of the online filter: {', '.join(down)}")
        return online_device_ids([alias for alias in serving_shards() if alias not in down])


class ShardFilter(admin.SimpleListFilter):
    """The device's current shard, from the directory's placement (no shard query)."""

    title = "shard"
    parameter_name = "shard"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple]:
        return [(alias, alias) for alias in Shard.objects.values_list("alias", flat=True)]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value():
            return queryset.filter(placement__shard_id=self.value())
        return queryset


class OnlineFilter(admin.SimpleListFilter):
    """Seen within DEVICE_OFFLINE_AFTER: asks every shard once, in parallel."""

    title = "online"
    parameter_name = "online"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple]:
        return [("online", "online"), ("offline", "offline")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "online":
            return queryset.filter(pk__in=reachable_online_ids(request))
        if self.value() == "offline":
            return queryset.exclude(pk__in=reachable_online_ids(request))
        return queryset


class OwnerFilter(admin.SimpleListFilter):
    """Web users with access to the device; only users who have any are offered."""

    title = "owner"
    parameter_name = "owner"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple]:
        owners = User.objects.filter(deviceaccess__isnull=False).distinct().order_by("username")
        return [(str(user.pk), user.username) for user in owners]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() and self.value().isdigit():
            return queryset.filter(deviceaccess__user_id=int(self.value()))
        return queryset
