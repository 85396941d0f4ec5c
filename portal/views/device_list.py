"""My devices, across every shard: one query per shard, however many devices."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from core.access import visible_devices
from shards.overview import DeviceOverview, device_overviews


def status_of(overview: DeviceOverview | None) -> str:
    if overview is None or overview.online is None:
        return "unknown"
    return "online" if overview.online else "offline"


@require_GET
@login_required
def device_list(request: HttpRequest) -> HttpResponse:
    # Devices and their placement in one directory query; then the shards in parallel.
    devices = list(
        visible_devices(request.user).select_related("placement").order_by("name", "serial")
    )
    placement = {
        device.pk: device.placement.shard_id
        for device in devices
        if getattr(device, "placement", None) is not None
    }
    overviews, unavailable = device_overviews(placement)
    rows = []
    for device in devices:
        overview = overviews.get(device.pk)
        latest = sorted(overview.latest.items()) if overview else []
        rows.append(
            {
                "device": device,
                "overview": overview,
                "status": status_of(overview),
                "latest": latest,
            }
        )
    return render(
        request,
        "portal/device_list.html",
        {"rows": rows, "unavailable_shards": unavailable},
    )
