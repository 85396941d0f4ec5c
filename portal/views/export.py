"""CSV export of a device's readings over a range, streamed as the shard hands rows over.

Rows are read in pages of CHUNK_ROWS, each a short query of its own that starts after
the last row of the one before (keyset paging on the readings' primary key order), so
a month of readings never sits in memory whole and no cursor outlives a transaction
(every database is reached through a transaction pooler). The access check and the
range are settled before the first byte, so an error is still a proper 404 or 400.
"""

import csv
from collections.abc import Iterator
from datetime import datetime

from django.contrib.auth.decorators import login_required
from django.db import connections
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.views.decorators.http import require_GET

from core.models import Device
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


def readings_in_pages(device: Device, start: datetime, end: datetime) -> Iterator[tuple]:
    """(ts, metric, value) of the device's readings in [start, end), in (ts, metric) order."""
    after: Q | None = None
    while True:
        page = Reading.objects.for_device(device).filter(ts__gte=start, ts__lt=end)
        if after is not None:
            page = page.filter(after)
        rows = list(page.order_by("ts", "metric").values_list("ts", "metric", "value")[:CHUNK_ROWS])
        yield from rows
        if len(rows) < CHUNK_ROWS:
            return
        last_ts, last_metric, _ = rows[-1]
        after = Q(ts__gt=last_ts) | Q(ts=last_ts, metric__gt=last_metric)


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
    rows = readings_in_pages(device, time_range.start, time_range.end)
    response = StreamingHttpResponse(csv_lines(rows), content_type="text/csv; charset=utf-8")
    name = f"device-{device.pk}-{time_range.start:%Y%m%dT%H%M%SZ}-{time_range.end:%Y%m%dT%H%M%SZ}"
    response["Content-Disposition"] = f'attachment; filename="{name}.csv"'
    return response
