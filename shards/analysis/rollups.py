"""Rollups: count, min, max and sum per device, metric and UTC minute, hour and day.

Incremental. The import marks every minute a batch touches (RollupPending, in
the same statement that stores the readings); this step claims marks in
batches, recomputes those minutes from the raw readings, then the hours of the
minutes that changed from their minutes, then the days from their hours, and
deletes the marks, all in one transaction per batch. So a late reading updates
exactly the buckets it falls in, and a run with no marks changes nothing. The
oldest mark of a device is its watermark: everything before it is rolled up.

Minutes before a device's RawRetention.raw_since have lost their raw readings to
retention: a late reading there is added to its minute and then deleted, since
recomputing would replace the minute with that one reading.

Work is fenced: marks of a device a move holds (or is copying) stay for a later
run on whichever shard owns the device then; they travel with its rows. Batches
on one shard take turns (a transaction-level advisory lock): two at once could
each recompute an hour from minutes the other had not committed yet.

Sums are numeric (shards.analysis.aggregates): any finite float is a legal
reading, and float8 sums of huge ones overflow. A batch that fails in the
database anyway is rolled back and split by device until the failing device is
found; it keeps its marks for the next run, and the others are rolled up.
"""

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import DatabaseError, connections, transaction

from shards.analysis.aggregates import safe_sum
from shards.analysis.buckets import BUCKET_ORIGIN, MinuteBucket
from shards.fence import has_no_fence_sql, lock_owned_devices
from shards.models import RawRetention, Reading, ReadingRollup, RollupPending

logger = logging.getLogger(__name__)

READINGS = Reading._meta.db_table
ROLLUPS = ReadingRollup._meta.db_table
PENDING = RollupPending._meta.db_table
RETENTION = RawRetention._meta.db_table
Granularity = ReadingRollup.Granularity

# Marks claimed per transaction: big enough for set-based SQL to pay off, small
# enough that a batch's locks and its transaction stay short.
BATCH_SIZE = 5000
# Batches per call; what is left waits for the next run (30 s later by default).
MAX_BATCHES = 200
# pg_advisory_xact_lock(namespace, 0) on the shard, beside the analysis run's 7411.
ROLLUP_LOCK_NAMESPACE = 7412

CLAIMED = """
    SELECT * FROM unnest(%(devices)s::bigint[], %(metrics)s::text[], %(minutes)s::timestamptz[])
        AS c(device_id, metric, minute)
"""

# Skip marks an import still holds (it has not committed its readings yet).
CLAIM = f"""
    DELETE FROM {PENDING} WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM {PENDING} WHERE device_id = ANY(%(owned)s)
        LIMIT %(limit)s FOR UPDATE SKIP LOCKED))
    RETURNING device_id, metric, minute
"""

ROLLUP_COLUMNS = "device_id, metric, granularity, bucket, count, min, max, sum, last_ts"
CHANGED_ONLY = f"""
    WHERE ({ROLLUPS}.count, {ROLLUPS}.min, {ROLLUPS}.max, {ROLLUPS}.sum, {ROLLUPS}.last_ts)
        IS DISTINCT FROM
          (excluded.count, excluded.min, excluded.max, excluded.sum, excluded.last_ts)
"""

# Every bucket is read by a LATERAL subquery: one primary-key range scan each. (A
# plain join on the time range lets the planner merge-join on device and metric and
# filter the range row by row: quadratic in the readings of one metric.)

# Minutes whose raw readings are all there: recomputed from them.
RECOMPUTE_MINUTES = f"""
    WITH claimed AS ({CLAIMED}), fresh AS (
        SELECT c.device_id, c.metric, c.minute, a.n, a.low, a.high, a.total, a.newest
        FROM claimed c
        CROSS JOIN LATERAL (
            SELECT count(*) AS n, min(r.value) AS low, max(r.value) AS high,
                   {safe_sum("r.value")} AS total, max(r.ts) AS newest
            FROM {READINGS} r
            WHERE r.device_id = c.device_id AND r.metric = c.metric
              AND r.ts >= c.minute AND r.ts < c.minute + interval '1 minute'
        ) a
        WHERE a.n > 0
    )
    INSERT INTO {ROLLUPS} ({ROLLUP_COLUMNS})
    SELECT device_id, metric, 'minute', minute, n, low, high, total, newest FROM fresh
    ORDER BY device_id, metric, minute
    ON CONFLICT (device_id, metric, granularity, bucket) DO UPDATE
        SET count = excluded.count, min = excluded.min, max = excluded.max,
            sum = excluded.sum, last_ts = excluded.last_ts
        {CHANGED_ONLY}
    RETURNING device_id, metric, bucket, count, min, max, sum
"""

# Minutes before raw_since: their late readings are added to the minute, then deleted.
MERGE_LATE_MINUTES = f"""
    WITH claimed AS ({CLAIMED}), found AS (
        SELECT c.device_id, c.metric, q.ts
        FROM claimed c
        CROSS JOIN LATERAL (
            SELECT r.ts FROM {READINGS} r
            WHERE r.device_id = c.device_id AND r.metric = c.metric
              AND r.ts >= c.minute AND r.ts < c.minute + interval '1 minute'
        ) q
    ), late AS (
        DELETE FROM {READINGS} r USING found f
        WHERE r.device_id = f.device_id AND r.metric = f.metric AND r.ts = f.ts
        RETURNING r.device_id, r.metric, r.ts, r.value
    ), added AS (
        SELECT device_id, metric, date_bin('1 minute', ts, %(origin)s) AS minute,
               count(*) AS n, min(value) AS low, max(value) AS high,
               {safe_sum("value")} AS total, max(ts) AS newest
        FROM late GROUP BY 1, 2, 3
    )
    INSERT INTO {ROLLUPS} ({ROLLUP_COLUMNS})
    SELECT device_id, metric, 'minute', minute, n, low, high, total, newest FROM added
    ORDER BY device_id, metric, minute
    ON CONFLICT (device_id, metric, granularity, bucket) DO UPDATE
        SET count = {ROLLUPS}.count + excluded.count,
            min = least({ROLLUPS}.min, excluded.min),
            max = greatest({ROLLUPS}.max, excluded.max),
            sum = {ROLLUPS}.sum + excluded.sum,
            last_ts = greatest({ROLLUPS}.last_ts, excluded.last_ts)
    RETURNING device_id, metric, bucket, count, min, max, sum
"""

# Coarser buckets (hours, days) recomputed from the finer ones inside them.
RECOMPUTE_COARSER = f"""
    WITH touched AS (
        SELECT DISTINCT t.device_id, t.metric,
               date_bin(%(width)s::interval, t.bucket, %(origin)s) AS bucket
        FROM unnest(%(devices)s::bigint[], %(metrics)s::text[], %(buckets)s::timestamptz[])
            AS t(device_id, metric, bucket)
    ), fresh AS (
        SELECT t.device_id, t.metric, t.bucket, a.n, a.low, a.high, a.total, a.newest
        FROM touched t
        CROSS JOIN LATERAL (
            SELECT sum(f.count) AS n, min(f.min) AS low, max(f.max) AS high,
                   sum(f.sum) AS total, max(f.last_ts) AS newest
            FROM {ROLLUPS} f
            WHERE f.device_id = t.device_id AND f.metric = t.metric
              AND f.granularity = %(finer)s
              AND f.bucket >= t.bucket AND f.bucket < t.bucket + %(width)s::interval
        ) a
        WHERE a.n > 0
    )
    INSERT INTO {ROLLUPS} ({ROLLUP_COLUMNS})
    SELECT device_id, metric, %(coarser)s, bucket, n, low, high, total, newest FROM fresh
    ORDER BY device_id, metric, bucket
    ON CONFLICT (device_id, metric, granularity, bucket) DO UPDATE
        SET count = excluded.count, min = excluded.min, max = excluded.max,
            sum = excluded.sum, last_ts = excluded.last_ts
        {CHANGED_ONLY}
    RETURNING device_id, metric, bucket
"""

Key = tuple[int, str, object]  # (device_id, metric, bucket start)


@dataclass
class RollupResult:
    """What one call did: marks claimed, buckets changed, devices left for later."""

    claimed: int = 0
    readings: int = 0  # readings in the minutes that changed
    changed: list[MinuteBucket] = field(default_factory=list)
    hours: int = 0
    days: int = 0
    devices_skipped: set[int] = field(default_factory=set)
    # Devices whose rollups failed in the database, with the reason; marks kept.
    devices_failed: dict[int, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        return {
            "claimed": self.claimed,
            "readings": self.readings,
            "minutes": len(self.changed),
            "hours": self.hours,
            "days": self.days,
            "devices_skipped": len(self.devices_skipped),
            "devices_failed": len(self.devices_failed),
        }


class BatchFailed(Exception):
    """Recomputing a batch's minutes failed in the database; its transaction (marks
    included) was rolled back. `devices`: the devices it had claimed marks of."""

    def __init__(self, devices: list[int], cause: DatabaseError) -> None:
        first_line = (str(cause).strip().splitlines() or [""])[0]
        super().__init__(f"{type(cause).__name__}: {first_line}")
        self.devices = devices


def _columns(keys: list[Key]) -> dict[str, list]:
    devices, metrics, starts = (list(column) for column in zip(*keys, strict=True))
    return {"devices": devices, "metrics": metrics, "minutes": starts}


def _upsert_minutes(cursor, sql: str, keys: list[Key]) -> list[MinuteBucket]:
    if not keys:
        return []
    cursor.execute(sql, {**_columns(keys), "origin": BUCKET_ORIGIN})
    return [MinuteBucket(*row) for row in cursor.fetchall()]


def _recompute_coarser(
    cursor, finer: str, coarser: str, width: timedelta, keys: list[Key]
) -> list[Key]:
    if not keys:
        return []
    devices, metrics, starts = (list(column) for column in zip(*keys, strict=True))
    params = {
        "devices": devices,
        "metrics": metrics,
        "buckets": starts,
        "width": width,
        "origin": BUCKET_ORIGIN,
        "finer": finer,
        "coarser": coarser,
    }
    cursor.execute(RECOMPUTE_COARSER, params)
    return [tuple(row) for row in cursor.fetchall()]


def _drop_orphan_marks(cursor, device_ids: set[int]) -> set[int]:
    """Delete the marks of devices with no fence row here at all; those devices.

    Every write to a device's shard holds its fence, and a move copies the fence
    row with the marks, so such marks belong to rows deleted by hand; they could
    never be claimed and would be counted as skipped on every run.
    """
    cursor.execute(
        f"DELETE FROM {PENDING} p WHERE p.device_id = ANY(%s)"
        f" AND {has_no_fence_sql('p.device_id')} RETURNING p.device_id",
        [sorted(device_ids)],
    )
    orphans = {row[0] for row in cursor.fetchall()}
    if orphans:
        logger.warning("dropped rollup marks of devices with no fence here: %s", sorted(orphans))
    return orphans


def _recompute(
    cursor, claimed: list[Key], retention: dict[int, object]
) -> tuple[list[MinuteBucket], list[Key], list[Key]]:
    """The claimed minutes, their hours and those hours' days; what changed of each."""
    late: list[Key] = []
    whole: list[Key] = []
    for device_id, metric, minute in claimed:
        raw_gone = device_id in retention and minute < retention[device_id]
        (late if raw_gone else whole).append((device_id, metric, minute))
    minutes = _upsert_minutes(cursor, RECOMPUTE_MINUTES, whole)
    minutes += _upsert_minutes(cursor, MERGE_LATE_MINUTES, late)
    hour_keys = [(b.device_id, b.metric, b.start) for b in minutes]
    hours = _recompute_coarser(
        cursor, Granularity.MINUTE, Granularity.HOUR, timedelta(hours=1), hour_keys
    )
    days = _recompute_coarser(cursor, Granularity.HOUR, Granularity.DAY, timedelta(days=1), hours)
    return minutes, hours, days


def _roll_up_batch(
    alias: str, result: RollupResult, limit: int, device_ids: list[int] | None
) -> int:
    """Claim up to `limit` marks of owned devices and roll them up; how many were claimed."""
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, 0)", [ROLLUP_LOCK_NAMESPACE])
        only = "" if device_ids is None else " WHERE device_id = ANY(%s)"
        cursor.execute(f"SELECT DISTINCT device_id FROM {PENDING}{only}", [device_ids])
        marked = [row[0] for row in cursor.fetchall() if row[0] not in result.devices_failed]
        if not marked:
            return 0
        # deleting: claiming deletes marks (and may delete late raw readings), which a
        # move copying the device could not see.
        owned = lock_owned_devices(alias, marked, deleting=True)
        skipped = set(marked) - set(owned)
        if skipped:
            result.devices_skipped |= skipped - _drop_orphan_marks(cursor, skipped)
        if not owned:
            return 0
        cursor.execute(CLAIM, {"owned": owned, "limit": limit})
        claimed = [tuple(row) for row in cursor.fetchall()]
        if not claimed:
            return 0
        retention = dict(
            RawRetention.objects.on_shard(alias)
            .filter(device_id__in={device_id for device_id, _, _ in claimed})
            .values_list("device_id", "raw_since")
        )
        try:
            minutes, hours, days = _recompute(cursor, claimed, retention)
        except DatabaseError as exc:  # leaving the block rolls the claim back too
            raise BatchFailed(sorted({device_id for device_id, _, _ in claimed}), exc) from exc
    result.claimed += len(claimed)
    result.changed += minutes
    result.readings += sum(bucket.count for bucket in minutes)
    result.hours += len(hours)
    result.days += len(days)
    return len(claimed)


def roll_up_shard(
    alias: str,
    *,
    device_ids: list[int] | None = None,
    batch_size: int = BATCH_SIZE,
    max_batches: int = MAX_BATCHES,
) -> RollupResult:
    """Roll up the shard's pending minutes (of `device_ids`, or all), batch after batch,
    until none are left to claim.

    Returns every minute bucket that is new or changed (for the alert rules); a
    second call with no new readings returns none. A device whose rollups fail in
    the database keeps its marks and is named in `devices_failed`; the others are
    rolled up all the same.
    """
    result = RollupResult()
    _drain(alias, result, device_ids, batch_size, iter(range(max_batches)))
    if result.claimed or result.devices_failed:
        logger.info("rollups on %s: %s", alias, result.as_dict())
    return result


def _drain(
    alias: str,
    result: RollupResult,
    device_ids: list[int] | None,
    batch_size: int,
    batches: Iterator[int],
) -> None:
    """Batches of the marks of `device_ids` (None: all) until one comes back short, or
    the run's batches are used up. A failed batch is split until the failing devices
    are found: a few more transactions for one bad device, not one per device."""
    for _ in batches:
        try:
            if _roll_up_batch(alias, result, batch_size, device_ids) < batch_size:
                return
        except BatchFailed as failure:
            if len(failure.devices) == 1:
                _keep_for_later(alias, result, failure.devices[0], str(failure))
                continue
            half = len(failure.devices) // 2
            for part in (failure.devices[:half], failure.devices[half:]):
                _drain(alias, result, part, batch_size, batches)


def _keep_for_later(alias: str, result: RollupResult, device_id: int, reason: str) -> None:
    """Name a device whose rollups failed: its marks stay, so the next run tries again,
    and every run that fails on it says so, with how long its marks have waited."""
    result.devices_failed[device_id] = reason
    with connections[alias].cursor() as cursor:
        cursor.execute(
            f"SELECT count(*), min(marked_at) FROM {PENDING} WHERE device_id = %s", [device_id]
        )
        marks, since = cursor.fetchone()
    logger.error(
        "rollups of device %s on %s failed, %s marks kept for the next run (pending since %s): %s",
        device_id,
        alias,
        marks,
        f"{since:%Y-%m-%d %H:%M:%S} UTC" if since else "-",
        reason,
    )
