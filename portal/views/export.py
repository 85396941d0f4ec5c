"""CSV export of a device's readings over a range, streamed as the shard hands rows over.

A server-side cursor feeds the response in chunks, so a month of readings never
sits in memory whole; the access check and the range are settled before the
first byte, so an error is still a proper 404 or 400.
"""

import csv
from collections.abc import Iterator

from django.contrib.auth.decorators import login_required
from django.db import connections
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.views.decorators.http import require_GET

from portal.access import device_or_404
from portal.views.shared import requested_range, shard_outage_as_503
from routers.placement import shard_for_device
from shards.models import Reading

CHUNK_ROWS = 2000


class _Line:
    """A file-like target for csv.writer that hands back what it was given."""

    def write(self, text: str) -> str:
        return text


def csv_lines(rows: Iterator[tuple]) -> Iterator[str]:
    writer = csv.writer(_Line())
    yield writer.writerow(["ts", "metric", "value"])
    for ts, metric, value in rows:
        yield writer.writerow([ts.isoformat(), metric, repr(value)])


@require_GET
@login_required
@shard_outage_as_503
def export_csv(request: HttpRequest, device_id: int) -> HttpResponse:
    device = device_or_404(request.user, device_id)
    time_range = requested_range(request)
    if isinstance(time_range, HttpResponse):
        return time_range
    # Rows are read only once streaming starts: make sure the shard answers first.
    connections[shard_for_device(device.pk)].ensure_connection()
    rows = (
        Reading.objects.for_device(device)
        .filter(ts__gte=time_range.start, ts__lt=time_range.end)
        .order_by("ts", "metric")
        .values_list("ts", "metric", "value")
        .iterator(chunk_size=CHUNK_ROWS)
    )
    response = StreamingHttpResponse(csv_lines(rows), content_type="text/csv; charset=utf-8")
    name = f"device-{device.pk}-{time_range.start:%Y%m%dT%H%M%SZ}-{time_range.end:%Y%m%dT%H%M%SZ}"
    response["Content-Disposition"] = f'attachment; filename="{name}.csv"'
    return response
