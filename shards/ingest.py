"""Ingest: stage a device's batch durably, then import it into readings in the background.

Staging is what the device waits for, so it is one INSERT on the device's shard
and nothing else. Its commit kicks an import of the shard (shards.import_queue):
a task that claims the shard's staged uploads many at a time and imports each
claim in one statement and one transaction (readings, latest values, device
status). The import is idempotent and at-least-once: a claim that dies with its
worker is rolled back and claimed again, an upload imported before is left as
it is, and readings are unique per (device, metric, ts).
"""

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from django.db import DataError, IntegrityError, connections, transaction

from routers.errors import UnknownDevice
from routers.registry import ensure_shard_connection
from shards.analysis.buckets import BUCKET_ORIGIN
from shards.commands import HAS_OPEN_SQL
from shards.fence import lock_owned_devices, served_device_sql, write_for_device
from shards.import_queue import kick_import
from shards.models import DeviceStatus, LatestValue, Reading, RollupPending, Upload

logger = logging.getLogger(__name__)

UPLOAD_TABLE = Upload._meta.db_table
READING_TABLE = Reading._meta.db_table
LATEST_TABLE = LatestValue._meta.db_table
STATUS_TABLE = DeviceStatus._meta.db_table
PENDING_TABLE = RollupPending._meta.db_table

# The import of many staged uploads in one statement inside the shard: the payloads
# are parsed once (MATERIALIZED) and never shipped to Python and back. A payload
# PostgreSQL cannot cast raises DataError/IntegrityError; the caller then imports the
# uploads one by one to mark only the bad one failed.
# readings: of two readings with the same (device, metric, ts) the one staged first
# wins (the earlier upload, then the earlier position in it), as does one stored
# before: DO NOTHING also skips a row this statement inserted already, and ORDER BY
# inserts in that order. The same order makes concurrent imports take index locks
# alike (they wait instead of deadlocking).
# stored: how many readings each upload stored (the receipt's `stored` and
# `duplicates`). When every reading was stored (the common case) that is each
# upload's count; only when some were not does the second branch (a one-time filter
# keeps it from running otherwise) find which upload's reading each stored one was.
# latest: the newest reading per metric (the first staged of equals), found with a
# hash aggregate instead of sorting the batch; only a newer one replaces the stored
# value, so a late, older batch leaves it.
# pending: the minutes the batch touches, for the rollup step. DO UPDATE (not DO
# NOTHING) so this transaction holds each mark locked until it commits: the rollup
# step skips locked marks, so it never recomputes a minute before these readings
# are visible and then deletes the mark that stood for them.
IMPORT_UPLOADS = f"""
    WITH claimed AS (
        SELECT id, device_id FROM {UPLOAD_TABLE} WHERE id = ANY(%(upload_ids)s)
    ), batch AS MATERIALIZED (
        SELECT u.id AS upload_id, u.device_id, r.metric, r.ts, r.value, r.position
        FROM {UPLOAD_TABLE} u,
             ROWS FROM (
                 jsonb_to_recordset(u.payload)
                     AS (ts timestamptz, metric varchar(64), value double precision)
             ) WITH ORDINALITY AS r(ts, metric, value, position)
        WHERE u.id = ANY(%(upload_ids)s)
    ), readings AS (
        INSERT INTO {READING_TABLE} (device_id, metric, ts, value)
        SELECT device_id, metric, ts, value FROM batch
        ORDER BY device_id, metric, ts, upload_id, position
        ON CONFLICT (device_id, metric, ts) DO NOTHING
        RETURNING device_id, metric, ts
    ), complete AS (
        SELECT (SELECT count(*) FROM readings) = (SELECT count(*) FROM batch) AS all_stored
    ), stored AS (
        SELECT upload_id, count(*) AS readings FROM batch
        WHERE (SELECT all_stored FROM complete)
        GROUP BY upload_id
        UNION ALL
        SELECT firsts.upload_id, count(*)
        FROM (
            SELECT DISTINCT ON (device_id, metric, ts) upload_id, device_id, metric, ts
            FROM batch
            ORDER BY device_id, metric, ts, upload_id, position
        ) firsts JOIN readings USING (device_id, metric, ts)
        WHERE NOT (SELECT all_stored FROM complete)
        GROUP BY firsts.upload_id
    ), newest AS (
        SELECT device_id, metric, max(ts) AS ts FROM batch GROUP BY device_id, metric
    ), latest AS (
        INSERT INTO {LATEST_TABLE} (device_id, metric, ts, value, updated_at)
        SELECT DISTINCT ON (device_id, metric) device_id, metric, ts, batch.value, now()
        FROM newest JOIN batch USING (device_id, metric, ts)
        ORDER BY device_id, metric, batch.upload_id, batch.position
        ON CONFLICT (device_id, metric) DO UPDATE
            SET ts = excluded.ts, value = excluded.value, updated_at = excluded.updated_at
            WHERE excluded.ts > {LATEST_TABLE}.ts
    ), pending AS (
        INSERT INTO {PENDING_TABLE} (device_id, metric, minute, marked_at)
        SELECT DISTINCT device_id, metric, date_bin('1 minute', ts, %(origin)s), now()
        FROM batch
        ORDER BY 1, 2, 3
        ON CONFLICT (device_id, metric, minute) DO UPDATE SET marked_at = excluded.marked_at
    ), status AS (
        INSERT INTO {STATUS_TABLE} (device_id, last_seen_at, last_upload_id, updated_at)
        SELECT device_id, now(), max(id), now() FROM claimed
        GROUP BY device_id
        ORDER BY device_id
        ON CONFLICT (device_id) DO UPDATE
            SET last_seen_at = greatest({STATUS_TABLE}.last_seen_at, excluded.last_seen_at),
                last_upload_id = excluded.last_upload_id,
                updated_at = excluded.updated_at
    )
    UPDATE {UPLOAD_TABLE} u
    SET status = %(imported)s, error = '', imported_at = now(),
        stored_count = coalesce(stored.readings, 0)
    FROM claimed LEFT JOIN stored ON stored.upload_id = claimed.id
    WHERE u.id = claimed.id
"""

IMPORT_TRANSACTION_SETTINGS = (
    "SELECT set_config('synchronous_commit', 'off', true), set_config('work_mem', '64MB', true)"
)

# An upload's row as the import checks it before parsing: the payload's JSON kind and
# length next to the count the device declared.
CHECKED_COLUMNS = """
    id, device_id, status, reading_count, jsonb_typeof(payload),
    CASE WHEN jsonb_typeof(payload) = 'array' THEN jsonb_array_length(payload) END
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


def stage_upload(device_id: int, batch_id: str, readings: list[dict[str, Any]]) -> StagedUpload:
    """Store a validated batch of readings given as dicts (stage_payload)."""
    payload = payload_of(readings)
    # allow_nan=False: JSON has no NaN/Infinity, PostgreSQL would refuse the jsonb anyway.
    return stage_payload(device_id, batch_id, json.dumps(payload, allow_nan=False), len(payload))


def stage_payload(
    device_id: int, batch_id: str, payload_json: str, reading_count: int
) -> StagedUpload:
    """Store a validated batch once per (device, batch id) and kick its import on commit.

    `payload_json` is the readings as a JSON list of {"ts", "metric", "value"}, times
    in ISO 8601 with their offset (the API writes it straight from its validated
    models, in pydantic's compiled serializer). A retried batch id returns the
    original upload and writes nothing, also when two copies arrive at once: ON
    CONFLICT DO NOTHING makes the second wait for the first and then find its row.
    The upload returned does not carry the payload.
    """

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
                [device_id, batch_id, Upload.Status.STAGED, payload_json, reading_count, device_id],
            )
            inserted = cursor.fetchone()
        if inserted is None:
            original = (
                Upload.objects.on_shard(alias)
                .defer("payload")
                .get(device_id=device_id, batch_id=batch_id)
            )
            return StagedUpload(upload=original, created=False, alias=alias)
        upload_id, received_at, commands_open = inserted
        upload = Upload(
            id=upload_id,
            device_id=device_id,
            batch_id=batch_id,
            status=Upload.Status.STAGED,
            reading_count=reading_count,
            error="",
            received_at=received_at,
        )
        upload._state.adding = False
        upload._state.db = alias
        # robust: nothing after the commit may turn a stored upload into an error reply.
        transaction.on_commit(lambda: kick_import(alias), using=alias, robust=True)
        return StagedUpload(upload=upload, created=True, alias=alias, commands_open=commands_open)

    return write_for_device(device_id, write)


def _shape_problem(kind: str, length: int | None, reading_count: int) -> str | None:
    """A payload that is not the list it claims to be; bad values are left to SQL casts."""
    if kind != "array":
        return f"payload is a JSON {kind}, not a list of readings"
    if length != reading_count:
        return f"payload holds {length} readings but reading_count says {reading_count}"
    return None


@dataclass(frozen=True)
class CheckedUpload:
    """An upload row as read (and locked) for its import, with what is wrong with its shape."""

    id: int
    device_id: int
    status: str
    problem: str | None
    readings: int

    @classmethod
    def of_row(cls, row: tuple) -> "CheckedUpload":
        upload_id, device_id, status, reading_count, kind, length = row
        problem = _shape_problem(kind, length, reading_count)
        return cls(upload_id, device_id, status, problem, reading_count)


class Claim(NamedTuple):
    """What one claim did: how many uploads it imported (or found failed), and whether it
    was full (its limit of uploads or readings reached: more may be waiting)."""

    imported: int
    full: bool


def _within(uploads: list[CheckedUpload], max_readings: int | None) -> list[CheckedUpload]:
    """The oldest uploads whose readings stay within `max_readings` (always the first)."""
    if max_readings is None:
        return uploads
    kept, total = [], 0
    for upload in uploads:
        total += upload.readings
        if kept and total > max_readings:
            break
        kept.append(upload)
    return kept


def _mark_failed(cursor: Any, upload: CheckedUpload, problem: str) -> str:
    logger.warning("upload %s of device %s failed: %s", upload.id, upload.device_id, problem)
    cursor.execute(
        f"UPDATE {UPLOAD_TABLE} SET status = %s, error = %s WHERE id = %s",
        [Upload.Status.FAILED, f"payload cannot be imported: {problem}", upload.id],
    )
    return Upload.Status.FAILED


def _sort_out(cursor: Any, uploads: list[CheckedUpload]) -> tuple[dict[int, str], list]:
    """(the final status of uploads that need no import, the uploads to import).

    Uploads imported (or failed) before are left as they are: a second import
    changes nothing. One whose payload is not the list it claims is marked failed.
    """
    statuses = {u.id: u.status for u in uploads if u.status != Upload.Status.STAGED}
    staged = [u for u in uploads if u.status == Upload.Status.STAGED]
    for upload in staged:
        if upload.problem is not None:
            statuses[upload.id] = _mark_failed(cursor, upload, upload.problem)
    return statuses, [u for u in staged if u.problem is None]


def _run_import(cursor: Any, uploads: list[CheckedUpload]) -> None:
    """IMPORT_UPLOADS for these locked, staged uploads; DataError/IntegrityError when
    PostgreSQL cannot cast a value in one of them (the transaction is then aborted)."""
    # Not waiting for the WAL flush is safe here: a crash that loses this commit loses
    # the 'imported' marks with it, and the uploads are imported again. A claim's sort
    # (its readings in index order) fits in memory instead of spilling to disk.
    cursor.execute(IMPORT_TRANSACTION_SETTINGS)
    cursor.execute(
        IMPORT_UPLOADS,
        {
            "upload_ids": [u.id for u in uploads],
            "imported": Upload.Status.IMPORTED.value,
            "origin": BUCKET_ORIGIN,
        },
    )


def _import_on_shard(alias: str, device_id: int, upload_id: int) -> str:
    with connections[alias].cursor() as cursor:
        cursor.execute(
            f"SELECT {CHECKED_COLUMNS} FROM {UPLOAD_TABLE} WHERE id = %s AND device_id = %s"
            " FOR UPDATE",
            [upload_id, device_id],
        )
        row = cursor.fetchone()
        if row is None:
            logger.warning("upload %s of device %s not found on %s", upload_id, device_id, alias)
            return "missing"
        statuses, good = _sort_out(cursor, [CheckedUpload.of_row(row)])
        if not good:
            return statuses[upload_id]
        try:
            with transaction.atomic(using=alias):  # a savepoint: a bad cast undoes only this
                _run_import(cursor, good)
        except (DataError, IntegrityError) as exc:
            return _mark_failed(cursor, good[0], str(exc).strip().splitlines()[0])
        return Upload.Status.IMPORTED


def import_upload_now(device_id: int, upload_id: int) -> str:
    """Import one staged upload; returns the upload's final status.

    The shard is resolved now, so an upload whose device moved is imported where
    it lives. A corrupt payload marks the upload failed; only infrastructure
    errors (and moves) raise, for a retry.
    """
    try:
        return write_for_device(
            device_id, lambda alias: _import_on_shard(alias, device_id, upload_id)
        )
    except UnknownDevice:
        logger.warning("upload %s: device %s is no longer in the directory", upload_id, device_id)
        return "missing"


def import_staged_batch(alias: str, limit: int, max_readings: int | None = None) -> Claim:
    """Claim up to `limit` staged uploads on `alias`, at most `max_readings` readings in
    all, and import them in one transaction.

    The readings bound keeps a claim short whatever the uploads' size: a claim holds its
    devices' fences until it commits, and a move that starts fencing one of them waits
    for it (with the device's writers queued behind the move).

    FOR UPDATE SKIP LOCKED lets several workers import one shard side by side, each
    its own uploads. Only devices the shard serves are claimed, their fences held
    FOR SHARE to the commit, as a device's own writes hold them; a device a mover
    holds is skipped (SKIP LOCKED) and imported by a later run wherever it lives.
    Oldest first: the partial index on staged uploads serves the order. No savepoint
    (two round trips a claim): a payload that cannot be cast rolls the claim back,
    and its uploads are then imported one by one.
    """
    owned: list[CheckedUpload] = []
    full = False
    try:
        with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
            cursor.execute(
                f"SELECT {CHECKED_COLUMNS} FROM {UPLOAD_TABLE} u"
                f" WHERE status = %s AND {served_device_sql('u.device_id')}"
                " ORDER BY received_at LIMIT %s FOR UPDATE SKIP LOCKED",
                [Upload.Status.STAGED, limit],
            )
            fetched = [CheckedUpload.of_row(row) for row in cursor.fetchall()]
            if not fetched:
                return Claim(0, False)
            # Those left out stay staged; their row locks go with this transaction.
            claimed = _within(fetched, max_readings)
            full = len(fetched) == limit or len(claimed) < len(fetched)
            held = set(lock_owned_devices(alias, sorted({u.device_id for u in claimed})))
            owned = [u for u in claimed if u.device_id in held]
            _, good = _sort_out(cursor, owned)
            if good:
                _run_import(cursor, good)
    except (DataError, IntegrityError):
        # A value in one of the payloads cannot be cast, and the claim was rolled back:
        # each upload alone, in its own transaction, so that only the bad one fails.
        for upload in owned:
            import_upload_now(upload.device_id, upload.id)
    return Claim(len(owned), full)


def import_staged(
    alias: str,
    *,
    batch: int,
    budget_seconds: float,
    pause_seconds: float = 0.0,
    max_readings: int | None = None,
) -> tuple[int, bool]:
    """Import `alias`'s staged uploads, claims of up to `batch` uploads and `max_readings`
    readings, until a claim finds none or `budget_seconds` are spent; (how many, whether
    the budget ran out first).

    Uploads that arrive meanwhile are claimed too: under load one run imports many
    claims, each of what arrived during the last, and after a claim that was not full
    it waits `pause_seconds` to let more gather. UnknownShard for a shard not
    registered, or retired.
    """
    ensure_shard_connection(alias)
    deadline = time.monotonic() + budget_seconds
    total = 0
    while True:
        claim = import_staged_batch(alias, batch, max_readings)
        total += claim.imported
        if claim.imported == 0:
            return total, False
        if time.monotonic() >= deadline:
            return total, True
        if not claim.full:
            time.sleep(pause_seconds)
