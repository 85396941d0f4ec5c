"""Retention: old raw readings of devices that ask for it, and imported raw uploads.

Rollups are separate rows and stay. Deletes take only plain 'active' owners
(deleting=True): a move that is copying a device could not see rows deleted
under it, so that device waits for a later run.
"""

from datetime import datetime, timedelta

from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

from core.models import Device
from shards.fence import lock_owned_devices
from shards.models import Reading, Upload

READINGS = Reading._meta.db_table

# One statement for every device with a retention; each has its own cutoff.
DELETE_OLD_READINGS = f"""
    DELETE FROM {READINGS} AS r
    USING unnest(%s::bigint[], %s::timestamptz[]) AS keep(device_id, cutoff)
    WHERE r.device_id = keep.device_id AND r.ts < keep.cutoff
"""


def delete_old_readings(alias: str, now: datetime | None = None) -> int:
    """Delete raw readings older than their device's raw_retention_days; how many."""
    now = now or timezone.now()
    with transaction.atomic(using=alias):
        owned = lock_owned_devices(alias, deleting=True)
        if not owned:
            return 0
        retention = Device.objects.filter(pk__in=owned, raw_retention_days__isnull=False)
        cutoffs = {
            device_id: now - timedelta(days=days)
            for device_id, days in retention.values_list("pk", "raw_retention_days")
        }
        if not cutoffs:
            return 0
        with connections[alias].cursor() as cursor:
            cursor.execute(DELETE_OLD_READINGS, [list(cutoffs), list(cutoffs.values())])
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
