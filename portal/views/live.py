"""What the page's script polls every 2 s: fresh fragments of the device page, as JSON.

The chart is recomputed only when the device has a reading newer than the one the
page shows (`since`), read from the small latest-values table; commands, alerts
and latest values are cheap and always sent. The fragments are rendered by the
same templates as the page, so the script only swaps HTML.
"""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string
from django.views.decorators.http import require_GET

from core.access import may_command
from portal.access import device_or_404
from portal.charts import chart_svg
from portal.device_data import newest_reading_ts, recent_alerts, recent_commands
from portal.ranges import BadRange, parse_time
from portal.views.shared import requested_range, shard_outage_as_503
from shards.overview import device_overview
from shards.series import device_series


@require_GET
@login_required
@shard_outage_as_503
def live(request: HttpRequest, device_id: int) -> HttpResponse:
    device = device_or_404(request.user, device_id)
    time_range = requested_range(request)
    if isinstance(time_range, HttpResponse):
        return time_range
    try:
        since = parse_time("since", request.GET["since"]) if request.GET.get("since") else None
    except BadRange as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    overview = device_overview(device.pk)
    context = {
        "device": device,
        "overview": overview,
        "latest": sorted(overview.latest.items()),
        "commands": recent_commands(device),
        "alerts": recent_alerts(device),
        "can_command": may_command(request.user, device),
    }
    answer = {
        "latest_html": render_to_string("portal/_latest.html", context, request),
        "commands_html": render_to_string("portal/_commands.html", context, request),
        "alerts_html": render_to_string("portal/_alerts.html", context, request),
        "chart_svg": None,
    }
    newest = newest_reading_ts(device)
    if since is None or (newest is not None and newest > since):
        series = device_series(device, time_range.start, time_range.end)
        answer["chart_svg"] = str(chart_svg(series))
        answer["latest_ts"] = series.latest_ts.isoformat() if series.latest_ts else ""
        answer["points"] = series.point_count
    return JsonResponse(answer)
