"""The device changelist's figures from the shards: one query per shard per page, in parallel.

The directory gives the page of devices with their placements (one join); the
shards are then asked only about the devices on the page, through
shards.overview.device_overviews, and each device carries its overview for the
columns to read. Nothing is kept on the ModelAdmin, which threads share.
"""

from datetime import datetime

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from core.models import Device
from portal.numbers import format_value
from shards.overview import DeviceOverview, device_overviews

OVERVIEW_ATTR = "_fleet_overview"


class DeviceChangeList(ChangeList):
    """A ChangeList that joins the shards' overviews onto the page it shows."""

    def get_results(self, request) -> None:
        super().get_results(request)
        placement = {
            device.pk: device.placement.shard_id
            for device in self.result_list
            if hasattr(device, "placement")
        }
        overviews, unavailable = device_overviews(placement)
        if unavailable:
            messages.warning(
                request,
                f"Unreachable shards (their devices show no figures): {', '.join(unavailable)}",
            )
        for device in self.result_list:
            setattr(device, OVERVIEW_ATTR, overviews.get(device.pk))


def overview_of(device: Device) -> DeviceOverview | None:
    return getattr(device, OVERVIEW_ATTR, None)


def _ago(moment: datetime) -> str:
    seconds = int((timezone.now() - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{max(seconds, 0)} s ago"


@admin.display(description="shard", ordering="placement__shard")
def shard_column(device: Device) -> str:
    placement = getattr(device, "placement", None)
    return placement.shard_id if placement else "-"


@admin.display(description="state")
def state_column(device: Device) -> str:
    overview = overview_of(device)
    if overview is None or overview.online is None:
        return format_html('<span class="fleet-state unreachable">shard unreachable</span>')
    word = "online" if overview.online else "offline"
    return format_html('<span class="fleet-state {}">{}</span>', word, word)


@admin.display(description="last seen")
def last_seen_column(device: Device) -> str:
    overview = overview_of(device)
    if overview is None or overview.last_seen_at is None:
        return "-"
    return format_html(
        '<span title="{}">{}</span>', overview.last_seen_at.isoformat(), _ago(overview.last_seen_at)
    )


@admin.display(description="latest values")
def latest_column(device: Device) -> str:
    overview = overview_of(device)
    if overview is None or not overview.latest:
        return "-"
    return format_html_join(
        ", ",
        "{}={}",
        ((metric, format_value(r["value"])) for metric, r in sorted(overview.latest.items())),
    )


@admin.display(description="open alerts")
def alerts_column(device: Device) -> int | str:
    overview = overview_of(device)
    return "-" if overview is None or not overview.reachable else overview.open_alerts
