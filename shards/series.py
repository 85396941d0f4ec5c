"""Bucketed series of one device's readings, for charts that must stay small and fast.

A chart never needs more points than it has pixels, so readings are grouped into
time buckets (PostgreSQL `date_bin`) with min/max/mean/count per metric, and the
bucket width is chosen so a range of any length comes back as about 200-400
points per metric. `device_series` is the single entry point.

Buckets of a minute or wider are read from the rollups (the coarsest granularity
that divides the width), so a month costs a few thousand rollup rows instead of
every reading. Raw readings fill in what the rollups do not hold (yet): the ragged
edges of the range, and everything from the device's oldest pending minute on
(its watermark). Before the device's raw_since (retention) the raw readings left
are late ones the rollups have not taken in, so both are read there. The result
equals an aggregate over the raw readings, whatever the rollups' progress.
"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import connections

from routers.placement import device_id_of
from shards.analysis.aggregates import bucket_mean, safe_sum
from shards.analysis.buckets import BUCKET_ORIGIN
from shards.fence import read_for_device
from shards.models import RawRetention, Reading, ReadingRollup, RollupPending

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
ORIGIN = BUCKET_ORIGIN
# Rollup granularities, coarsest first.
GRANULARITIES = [
    (timedelta(days=1), ReadingRollup.Granularity.DAY),
    (timedelta(hours=1), ReadingRollup.Granularity.HOUR),
    (timedelta(minutes=1), ReadingRollup.Granularity.MINUTE),
]


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


WATERMARKS_SQL = f"""
SELECT (SELECT min(minute) FROM {RollupPending._meta.db_table} WHERE device_id = %(device)s),
       (SELECT raw_since FROM {RawRetention._meta.db_table} WHERE device_id = %(device)s)
"""

# Raw readings outside [rollups_from, rollups_to) (or before raw_since), plus the
# rollups inside it, merged per chart bucket.
SERIES_SQL = f"""
WITH parts AS (
    SELECT date_bin(%(width)s::interval, ts, %(origin)s) AS bucket, metric,
           min(value) AS low, max(value) AS high, {safe_sum("value")} AS total,
           count(*) AS n, max(ts) AS newest
      FROM {Reading._meta.db_table}
     WHERE device_id = %(device)s AND ts >= %(start)s AND ts < %(end)s
       AND (ts < %(rollups_from)s OR ts >= %(rollups_to)s OR ts < %(raw_since)s)
     GROUP BY 1, 2
    UNION ALL
    SELECT date_bin(%(width)s::interval, bucket, %(origin)s), metric,
           min(min), max(max), sum(sum), sum(count), max(last_ts)
      FROM {ReadingRollup._meta.db_table}
     WHERE device_id = %(device)s AND granularity = %(granularity)s
       AND bucket >= %(rollups_from)s AND bucket < %(rollups_to)s
     GROUP BY 1, 2
)
SELECT bucket, metric, min(low), max(high), sum(total), sum(n)::bigint, max(newest)
  FROM parts
 GROUP BY bucket, metric
 ORDER BY metric, bucket
"""


def floor_to(moment: datetime, width: timedelta) -> datetime:
    return ORIGIN + (moment - ORIGIN) // width * width


def ceil_to(moment: datetime, width: timedelta) -> datetime:
    floor = floor_to(moment, width)
    return floor if floor == moment else floor + width


def rollup_span(
    start: datetime,
    end: datetime,
    granularity: timedelta,
    pending_from: datetime | None,
    raw_since: datetime | None,
) -> tuple[datetime, datetime]:
    """The whole rollup buckets [from, to) the series may read from rollups.

    Inside the range, and before the oldest pending minute, or before raw_since
    (where rollups and the raw readings left are disjoint). A range that starts
    where the raw readings are gone begins at its first bucket's start.
    """
    deleted_before_start = raw_since is not None and start < raw_since
    first = floor_to(start, granularity) if deleted_before_start else ceil_to(start, granularity)
    last = floor_to(end, granularity)
    settled = floor_to(min(end, pending_from), granularity) if pending_from else last
    if raw_since is not None:
        settled = max(settled, raw_since)
    last = min(last, settled)
    return (first, last) if first < last else (start, start)


def granularity_for(width: timedelta) -> tuple[timedelta, str] | None:
    """The coarsest rollup granularity a chart bucket is a whole number of, if any."""
    for size, name in GRANULARITIES:
        if width >= size and width % size == timedelta(0):
            return size, name
    return None


def device_series(device: object, start: datetime, end: datetime) -> Series:
    """Min/max/mean/count per metric and bucket of the device's readings in [start, end).

    Two queries on the device's shard (its watermarks, then the series), whatever
    the range's length.
    """
    if start >= end:
        raise ValueError("start must be before end")
    device_id = device_id_of(device)
    width = bucket_width(start, end)
    series = Series(start=start, end=end, width=width)
    granularity = granularity_for(width)
    params = {
        "device": device_id,
        "width": width,
        "origin": ORIGIN,
        "start": start,
        "end": end,
        "rollups_from": start,
        "rollups_to": start,
        "raw_since": None,
        "granularity": granularity[1] if granularity else None,
    }

    def read(alias: str) -> list[tuple]:
        with connections[alias].cursor() as cursor:
            if granularity is not None:
                cursor.execute(WATERMARKS_SQL, params)
                pending_from, raw_since = cursor.fetchone()
                params["raw_since"] = raw_since
                params["rollups_from"], params["rollups_to"] = rollup_span(
                    start, end, granularity[0], pending_from, raw_since
                )
            cursor.execute(SERIES_SQL, params)
            return cursor.fetchall()

    # Two statements that must agree, on the shard that serves the device (the fence).
    rows = read_for_device(device_id, read)
    for bucket, metric, low, high, total, count, newest in rows:
        mean = bucket_mean(total, count, low, high)
        series.metrics.setdefault(metric, []).append(Bucket(bucket, low, high, mean, count))
        if series.latest_ts is None or newest > series.latest_ts:
            series.latest_ts = newest
    return series
