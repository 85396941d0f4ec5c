"""Retention: old raw readings of devices that ask for it, and imported raw uploads.

Rollups are separate rows and stay. Raw readings go a whole UTC day at a time,
and never from a minute the rollups have not taken in yet (a pending mark): the
cut is the start of the day of the device's oldest mark if that comes first. The
cut is recorded (RawRetention.raw_since), so the rollup step knows that minutes
before it must not be recomputed from the raw readings left there.

Deletes take only plain 'active' owners (deleting=True): a move that is copying a
device could not see rows deleted under it, so that device waits for a later run.
Readings hold the devices exclusively (their imports wait a moment), so no mark
can appear between choosing the cut and deleting up to it.
"""

from datetime import datetime, timedelta

from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

from core.models import Device
from shards.analysis.buckets import BUCKET_ORIGIN
from shards.fence import lock_owned_devices
from shards.models import RawRetention, Reading, RollupPending, Upload

READINGS = Reading._meta.db_table
PENDING = RollupPending._meta.db_table
RETENTION = RawRetention._meta.db_table

# One statement for every device with a retention, each with its own wanted cut:
# the cut is held back to the day of the oldest pending mark, never moves back, and
# readings between the previous cut and the new one are deleted (readings before
# the previous cut are late ones the rollup step has not added yet).
DELETE_OLD_READINGS = f"""
    WITH wanted AS (
        SELECT w.device_id, least(
                   date_bin('1 day', w.cutoff, %(origin)s),
                   coalesce(date_bin('1 day', (SELECT min(p.minute) FROM {PENDING} p
                                               WHERE p.device_id = w.device_id), %(origin)s),
                            'infinity')
               ) AS cut,
               k.raw_since AS previous
        FROM unnest(%(devices)s::bigint[], %(cutoffs)s::timestamptz[]) AS w(device_id, cutoff)
        LEFT JOIN {RETENTION} k ON k.device_id = w.device_id
    ), moving AS (
        SELECT device_id, cut, previous FROM wanted
        WHERE previous IS NULL OR cut > previous
    ), recorded AS (
        INSERT INTO {RETENTION} (device_id, raw_since)
        SELECT device_id, cut FROM moving
        ON CONFLICT (device_id) DO UPDATE SET raw_since = excluded.raw_since
    )
    DELETE FROM {READINGS} AS r USING moving m
    WHERE r.device_id = m.device_id AND r.ts < m.cut
      AND (m.previous IS NULL OR r.ts >= m.previous)
"""


def delete_old_readings(alias: str, now: datetime | None = None) -> int:
    """Delete raw readings older than their device's raw_retention_days; how many."""
    now = now or timezone.now()
    retention = dict(
        Device.objects.filter(raw_retention_days__isnull=False).values_list(
            "pk", "raw_retention_days"
        )
    )
    if not retention:
        return 0
    with transaction.atomic(using=alias):
        owned = lock_owned_devices(alias, list(retention), deleting=True, exclusive=True)
        if not owned:
            return 0
        params = {
            "devices": owned,
            "cutoffs": [now - timedelta(days=retention[device_id]) for device_id in owned],
            "origin": BUCKET_ORIGIN,
        }
        with connections[alias].cursor() as cursor:
            cursor.execute(DELETE_OLD_READINGS, params)
            return cursor.rowcount


def delete_imported_uploads(alias: str, now: datetime | None = None) -> int:
    """Delete uploads imported more than UPLOAD_RETENTION_DAYS ago; how many.

    Their readings are in the readings table by then; staged and failed uploads
    stay (one is still to be imported, the other is evidence to look at).
    """
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.UPLOAD_RETENTION_DAYS)
    with transaction.atomic(using=alias):
        owned = lock_owned_devices(alias, deleting=True)
        if not owned:
            return 0
        deleted, _ = (
            Upload.objects.on_shard(alias)
            .filter(device_id__in=owned, status=Upload.Status.IMPORTED, imported_at__lt=cutoff)
            .delete()
        )
        return deleted
