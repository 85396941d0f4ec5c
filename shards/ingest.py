"""Ingest: stage a device's batch durably, then import it into readings in the background.

Staging is what the device waits for, so it is one INSERT on the device's shard
and nothing else; the import (readings, latest values, device status) runs in a
Celery task queued only after the staging transaction commits. The import is
idempotent and at-least-once: a duplicate task finds the upload already
imported, a re-delivered one after a crash finds it still staged, and readings
are unique per (device, metric, ts). Staged uploads whose task was lost (broker
down, worker killed) are queued again by the sweeper.
"""

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import DataError, IntegrityError, connections, transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import RedisError

from core.celery import app as celery_app
from routers.errors import UnknownDevice
from shards.analysis.buckets import BUCKET_ORIGIN
from shards.commands import HAS_OPEN_SQL
from shards.fence import held_devices, write_for_device
from shards.models import DeviceStatus, LatestValue, Reading, RollupPending, Upload

logger = logging.getLogger(__name__)

UPLOAD_TABLE = Upload._meta.db_table
READING_TABLE = Reading._meta.db_table
LATEST_TABLE = LatestValue._meta.db_table
STATUS_TABLE = DeviceStatus._meta.db_table
PENDING_TABLE = RollupPending._meta.db_table

# Most uploads one sweep queues again per shard: a long backlog is worked off in
# later sweeps instead of flooding the broker with duplicates all at once.
SWEEP_LIMIT = 1000

IMPORT_TASK = "shards.tasks.import_upload"
# A broker outage must cost the device request a fraction of a second, not seconds:
# the upload is already durable and the sweeper queues it later.
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.1}

# The whole import in one statement inside the shard: the payload is parsed once
# (MATERIALIZED) and never shipped to Python and back. A payload PostgreSQL cannot
# cast raises DataError/IntegrityError, which marks the upload failed.
# readings: ORDER BY makes concurrent imports of one device take index locks in the
# same order (they wait instead of deadlocking), and the first of two readings with
# the same (metric, ts) in a batch wins, as does one stored by an earlier batch; how
# many were stored goes on the upload (the receipt's `stored` and `duplicates`).
# latest picks that same reading.
# latest: only a newer reading replaces the stored one; a late, older batch leaves it.
# pending: the minutes the batch touches, for the rollup step. DO UPDATE (not DO
# NOTHING) so this transaction holds each mark locked until it commits: the rollup
# step skips locked marks, so it never recomputes a minute before these readings
# are visible and then deletes the mark that stood for them.
IMPORT_UPLOAD = f"""
    WITH batch AS MATERIALIZED (
        SELECT r.metric, r.ts, r.value, r.position
        FROM {UPLOAD_TABLE} u,
             ROWS FROM (
                 jsonb_to_recordset(u.payload)
                     AS (ts timestamptz, metric varchar(64), value double precision)
             ) WITH ORDINALITY AS r(ts, metric, value, position)
        WHERE u.id = %(upload_id)s
    ), readings AS (
        INSERT INTO {READING_TABLE} (device_id, metric, ts, value)
        SELECT %(device_id)s, metric, ts, value FROM batch
        ORDER BY metric, ts, position
        ON CONFLICT (device_id, metric, ts) DO NOTHING
        RETURNING 1
    ), latest AS (
        INSERT INTO {LATEST_TABLE} (device_id, metric, ts, value, updated_at)
        SELECT DISTINCT ON (metric) %(device_id)s, metric, ts, value, now() FROM batch
        ORDER BY metric, ts DESC, position
        ON CONFLICT (device_id, metric) DO UPDATE
            SET ts = excluded.ts, value = excluded.value, updated_at = excluded.updated_at
            WHERE excluded.ts > {LATEST_TABLE}.ts
    ), pending AS (
        INSERT INTO {PENDING_TABLE} (device_id, metric, minute, marked_at)
        SELECT DISTINCT %(device_id)s::bigint, metric,
               date_bin('1 minute', ts, %(origin)s), now()
        FROM batch
        ORDER BY 2, 3
        ON CONFLICT (device_id, metric, minute) DO UPDATE SET marked_at = excluded.marked_at
    ), status AS (
        INSERT INTO {STATUS_TABLE} (device_id, last_seen_at, last_upload_id, updated_at)
        VALUES (%(device_id)s, now(), %(upload_id)s, now())
        ON CONFLICT (device_id) DO UPDATE
            SET last_seen_at = greatest({STATUS_TABLE}.last_seen_at, excluded.last_seen_at),
                last_upload_id = excluded.last_upload_id,
                updated_at = excluded.updated_at
    )
    UPDATE {UPLOAD_TABLE}
    SET status = %(imported)s, error = '', imported_at = now(),
        stored_count = (SELECT count(*) FROM readings)
    WHERE id = %(upload_id)s
"""


@dataclass(frozen=True)
class StagedUpload:
    """The stored upload; `created` is False when the batch id had been staged before."""

    upload: Upload
    created: bool
    alias: str
    # Whether the device had commands open, read in the staging transaction (None: not read).
    commands_open: bool | None = None


def _utc_iso(ts: datetime) -> str:
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"reading time {ts!r} has no time zone")
    return ts.astimezone(UTC).isoformat()


def payload_of(readings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Readings as stored in Upload.payload: ISO-8601 UTC times, plain floats."""
    return [
        {"ts": _utc_iso(r["ts"]), "metric": r["metric"], "value": float(r["value"])}
        for r in readings
    ]


def queue_import(device_id: int, upload_id: int) -> bool:
    """Queue the import task; a broker outage is logged, not raised (the sweeper retries).

    Sent by name: shards.tasks calls into this module, never the other way round.
    """
    try:
        celery_app.send_task(
            IMPORT_TASK, args=(device_id, upload_id), retry_policy=PUBLISH_RETRY_POLICY
        )
    except (BrokerError, RedisError, OSError) as exc:
        logger.warning(
            "could not queue import of upload %s (device %s); the sweeper will: %s",
            upload_id,
            device_id,
            exc,
        )
        return False
    return True


def stage_upload(device_id: int, batch_id: str, readings: list[dict[str, Any]]) -> StagedUpload:
    """Store a validated batch once per (device, batch id) and queue its import on commit.

    A retried batch id returns the original upload and writes nothing, also when
    two copies arrive at once: ON CONFLICT DO NOTHING makes the second wait for
    the first and then find its row.
    """
    payload = payload_of(readings)
    # allow_nan=False: JSON has no NaN/Infinity, PostgreSQL would refuse the jsonb anyway.
    payload_json = json.dumps(payload, allow_nan=False)

    def write(alias: str) -> StagedUpload:
        with connections[alias].cursor() as cursor:
            cursor.execute(
                f"""
                INSERT INTO {UPLOAD_TABLE}
                    (device_id, batch_id, status, payload, reading_count, error, received_at)
                VALUES (%s, %s, %s, %s::jsonb, %s, '', now())
                ON CONFLICT (device_id, batch_id) DO NOTHING
                RETURNING id, received_at, {HAS_OPEN_SQL}
                """,
                [device_id, batch_id, Upload.Status.STAGED, payload_json, len(payload), device_id],
            )
            inserted = cursor.fetchone()
        if inserted is None:
            original = Upload.objects.on_shard(alias).get(device_id=device_id, batch_id=batch_id)
            return StagedUpload(upload=original, created=False, alias=alias)
        upload_id, received_at, commands_open = inserted
        upload = Upload(
            id=upload_id,
            device_id=device_id,
            batch_id=batch_id,
            status=Upload.Status.STAGED,
            payload=payload,
            reading_count=len(payload),
            error="",
            received_at=received_at,
        )
        upload._state.adding = False
        upload._state.db = alias
        # robust: nothing after the commit may turn a stored upload into an error reply.
        transaction.on_commit(lambda: queue_import(device_id, upload_id), using=alias, robust=True)
        return StagedUpload(upload=upload, created=True, alias=alias, commands_open=commands_open)

    return write_for_device(device_id, write)


def _shape_problem(kind: str, length: int | None, reading_count: int) -> str | None:
    """A payload that is not the list it claims to be; bad values are left to SQL casts."""
    if kind != "array":
        return f"payload is a JSON {kind}, not a list of readings"
    if length != reading_count:
        return f"payload holds {length} readings but reading_count says {reading_count}"
    return None


def _import_on_shard(alias: str, device_id: int, upload_id: int) -> str:
    with connections[alias].cursor() as cursor:
        cursor.execute(
            f"""
            SELECT status, reading_count, jsonb_typeof(payload),
                   CASE WHEN jsonb_typeof(payload) = 'array' THEN jsonb_array_length(payload) END
            FROM {UPLOAD_TABLE} WHERE id = %s AND device_id = %s
            FOR UPDATE
            """,
            [upload_id, device_id],
        )
        row = cursor.fetchone()
        if row is None:
            logger.warning("upload %s of device %s not found on %s", upload_id, device_id, alias)
            return "missing"
        status, reading_count, kind, length = row
        if status != Upload.Status.STAGED:
            return status  # imported (or failed) before: a duplicate task changes nothing
        problem = _shape_problem(kind, length, reading_count)
        if problem is None:
            params = {
                "upload_id": upload_id,
                "device_id": device_id,
                "imported": Upload.Status.IMPORTED.value,
                "origin": BUCKET_ORIGIN,
            }
            # Not waiting for the WAL flush is safe here: a crash that loses this commit
            # loses the 'imported' mark with it, and the sweeper imports the upload again.
            cursor.execute("SET LOCAL synchronous_commit = off")
            try:
                with transaction.atomic(using=alias):  # a savepoint: a bad cast undoes only this
                    cursor.execute(IMPORT_UPLOAD, params)
            except (DataError, IntegrityError) as exc:
                problem = str(exc).strip().splitlines()[0]
            else:
                return Upload.Status.IMPORTED
        logger.warning("upload %s of device %s failed: %s", upload_id, device_id, problem)
        cursor.execute(
            f"UPDATE {UPLOAD_TABLE} SET status = %s, error = %s WHERE id = %s",
            [Upload.Status.FAILED, f"payload cannot be imported: {problem}", upload_id],
        )
        return Upload.Status.FAILED


def import_upload_now(device_id: int, upload_id: int) -> str:
    """Import one staged upload (the task body); returns the upload's final status.

    The shard is resolved now, not when the task was queued, so an upload whose
    device moved meanwhile is imported where it lives. A corrupt payload marks
    the upload failed; only infrastructure errors (and moves) raise, for a retry.
    """
    try:
        return write_for_device(
            device_id, lambda alias: _import_on_shard(alias, device_id, upload_id)
        )
    except UnknownDevice:
        logger.warning("upload %s: device %s is no longer in the directory", upload_id, device_id)
        return "missing"


def sweep_staged_uploads(alias: str, older_than_seconds: int) -> int:
    """Queue again the staged uploads of one shard older than the threshold; how many.

    Their task was lost (broker down at staging, worker killed mid-import). A
    duplicate task is harmless: it finds the upload imported and returns.
    """
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    # Uploads of devices moved away are imported where the device lives now (their
    # copies came along); the copies left here until cleanup are not queued again.
    # status + received_at: served by the partial index upload_staged_idx.
    stale = (
        Upload.objects.on_shard(alias)
        .filter(status=Upload.Status.STAGED, received_at__lte=cutoff)
        .filter(device_id__in=held_devices(alias))
        .order_by("received_at")
        .values_list("device_id", "id")[:SWEEP_LIMIT]
    )
    queued = sum(queue_import(device_id, upload_id) for device_id, upload_id in stale)
    if queued:
        logger.info("sweeper queued %s staged upload(s) on %s again", queued, alias)
    return queued
