"""Bucketed series of one device's readings, for charts that must stay small and fast.

A chart never needs more points than it has pixels, so readings are grouped into
time buckets (PostgreSQL `date_bin`) with min/max/mean/count per metric, and the
bucket width is chosen so a range of any length comes back as about 200-400
points per metric. `device_series` is the single entry point: when long ranges
move to rollup tables, only this module changes.
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.db import connections

from routers.placement import device_id_of, shard_for_device
from shards.models import Reading

MAX_POINTS = 400
# Widths a person reads easily on an axis; the smallest that keeps a range under
# MAX_POINTS buckets wins.
NICE_WIDTHS = [
    timedelta(seconds=s)
    for s in (
        1, 2, 5, 10, 15, 30,
        60, 120, 300, 600, 900, 1800,
        3600, 7200, 10800, 21600, 43200, 86400,
    )
]  # fmt: skip
# Buckets start on a fixed origin, so the same reading lands in the same bucket on
# every refresh and a live chart does not wobble.
ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Bucket:
    start: datetime
    min: float
    max: float
    mean: float
    count: int


@dataclass
class Series:
    """Per metric, the buckets of [start, end) that hold readings, oldest first."""

    start: datetime
    end: datetime
    width: timedelta
    metrics: dict[str, list[Bucket]] = field(default_factory=dict)
    latest_ts: datetime | None = None

    @property
    def point_count(self) -> int:
        return sum(len(buckets) for buckets in self.metrics.values())


def bucket_width(start: datetime, end: datetime) -> timedelta:
    """The smallest nice width giving at most MAX_POINTS buckets over [start, end)."""
    span = end - start
    for width in NICE_WIDTHS:
        if span / width <= MAX_POINTS:
            return width
    days = -(-span // (NICE_WIDTHS[-1] * MAX_POINTS))
    return NICE_WIDTHS[-1] * days


SERIES_SQL = f"""
SELECT date_bin(%s::interval, ts, %s::timestamptz) AS bucket, metric,
       min(value), max(value), avg(value), count(*), max(ts)
  FROM {Reading._meta.db_table}
 WHERE device_id = %s AND ts >= %s AND ts < %s
 GROUP BY bucket, metric
 ORDER BY metric, bucket
"""


def device_series(device: object, start: datetime, end: datetime) -> Series:
    """Min/max/mean/count per metric and bucket of the device's readings in [start, end).

    One query on the device's shard, whatever the range's length.
    """
    if start >= end:
        raise ValueError("start must be before end")
    device_id = device_id_of(device)
    width = bucket_width(start, end)
    series = Series(start=start, end=end, width=width)
    with connections[shard_for_device(device_id)].cursor() as cursor:
        cursor.execute(SERIES_SQL, [width, ORIGIN, device_id, start, end])
        rows = cursor.fetchall()
    for bucket, metric, low, high, mean, count, newest in rows:
        series.metrics.setdefault(metric, []).append(Bucket(bucket, low, high, mean, count))
        if series.latest_ts is None or newest > series.latest_ts:
            series.latest_ts = newest
    return series
