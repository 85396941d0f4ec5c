"""A device's page: live chart, latest values, commands and alerts."""

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from core.access import may_command
from core.models import Device
from portal.access import device_or_404
from portal.charts import chart_svg, width_label
from portal.device_data import recent_alerts, recent_commands
from portal.forms import CommandForm
from portal.ranges import PRESETS, TimeRange
from portal.views.shared import requested_range, shard_outage_as_503
from shards.overview import device_overview
from shards.series import device_series


def page_context(
    request: HttpRequest, device: Device, time_range: TimeRange, form: CommandForm | None = None
) -> dict[str, Any]:
    series = device_series(device, time_range.start, time_range.end)
    overview = device_overview(device.pk)
    return {
        "device": device,
        "overview": overview,
        "latest": sorted(overview.latest.items()),
        "series": series,
        "chart": chart_svg(series),
        "bucket": width_label(series.width),
        "range": time_range,
        "presets": list(PRESETS),
        "commands": recent_commands(device),
        "alerts": recent_alerts(device),
        "can_command": may_command(request.user, device),
        "form": form or CommandForm(),
    }


@require_GET
@login_required
@shard_outage_as_503
def device_page(request: HttpRequest, device_id: int) -> HttpResponse:
    device = device_or_404(request.user, device_id)
    time_range = requested_range(request)
    if isinstance(time_range, HttpResponse):
        return time_range
    return render(request, "portal/device_page.html", page_context(request, device, time_range))
