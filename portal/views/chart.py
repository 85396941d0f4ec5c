"""The chart alone, as an SVG image (the central admin embeds it with <img> for staff)."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from portal.access import device_or_404
from portal.charts import chart_svg
from portal.views.shared import requested_range, shard_outage_as_503
from shards.series import device_series


@require_GET
@login_required
@shard_outage_as_503
def chart(request: HttpRequest, device_id: int) -> HttpResponse:
    device = device_or_404(request.user, device_id)
    time_range = requested_range(request)
    if isinstance(time_range, HttpResponse):
        return time_range
    series = device_series(device, time_range.start, time_range.end)
    response = HttpResponse(chart_svg(series), content_type="image/svg+xml")
    response["Cache-Control"] = "private, max-age=5"
    return response
