"""Removing a deleted device's rows from the shards, in the background, fenced.

Deleting a device in the directory (admin, shell, any ORM path) records a
`core.DeviceDeletion` in the same transaction; after commit a Celery task removes
the device's rows from every shard that holds data (its own, and an old one a
move has not cleaned up yet), and beat retries whatever a shard being down or a
lost task left unfinished. On each shard the device's fence row is locked FOR
UPDATE first, as a move's cleanup does: writers in flight (an import queued just
before the delete) finish before the rows go, and later ones find no fence and
give up, because the directory no longer knows the device.
"""

import logging
from typing import Any

from django.db import connections, transaction
from django.utils import timezone

from core.celery import app as celery_app
from core.models import Device, DeviceDeletion
from routers.fanout import fan_out
from routers.placement import invalidate_placement
from routers.registry import serving_shards
from shards.fence import FENCE_TABLE, fence_state, remove_fence
from shards.moves.copying import delete_device_rows
from shards.moves.tables import device_tables

logger = logging.getLogger(__name__)
PURGE_TASK = "shards.tasks.purge_deleted_device"
# Deletions one beat tick retries; the rest wait for the next tick.
RETRY_BATCH = 100


def purge_on_shard(alias: str, device_id: int) -> dict[str, int]:
    """Delete the device's rows and its fence row on one shard; rows removed per table."""
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        fence_state(cursor, device_id, lock=True)  # writers in flight finish first
        removed = delete_device_rows(cursor, device_id, device_tables())
        removed[FENCE_TABLE] = remove_fence(cursor, device_id)
    return {table: count for table, count in removed.items() if count}


def purge_deleted_device(deletion: DeviceDeletion) -> bool:
    """Remove the device's rows from every shard; True once no shard holds any."""
    # The registry as it is now: a shard added by another process within this process's
    # SHARD_REGISTRY_TTL may hold the device's rows (a move onto it), and a deletion
    # marked finished is never looked at again.
    results = fan_out(
        lambda alias: purge_on_shard(alias, deletion.device_id),
        serving_shards(fresh=True),
        return_exceptions=True,
    )
    failed = {alias: r for alias, r in results.items() if isinstance(r, BaseException)}
    removed = {alias: r for alias, r in results.items() if not isinstance(r, BaseException) and r}
    # A task and beat's retry may purge the same device at once: neither may undo the
    # other's finish, so each writes only while the deletion is unfinished.
    unfinished = DeviceDeletion.objects.filter(pk=deletion.pk, finished_at__isnull=True)
    rows_removed = {**deletion.rows_removed, **removed}
    if failed:
        error = "; ".join(f"{alias}: {exc}" for alias, exc in sorted(failed.items()))
        unfinished.update(rows_removed=rows_removed, error=error)
        logger.warning("deleting device %s: retried later: %s", deletion.device_id, error)
    else:
        unfinished.update(rows_removed=rows_removed, error="", finished_at=timezone.now())
        logger.info("device %s deleted from the shards: %s", deletion.device_id, removed)
    deletion.refresh_from_db()
    return not failed


def delete_devices_now(device_ids: list[int]) -> None:
    """Delete devices and remove their rows from the shards at once, not in the background.

    For tools that clean up after themselves (benchmarks): the same path as the admin's
    delete, with the purge run here instead of by a task.
    """
    Device.objects.filter(pk__in=device_ids).delete()
    for deletion in DeviceDeletion.objects.filter(device_id__in=device_ids, finished_at=None):
        purge_deleted_device(deletion)


def purge_pending_deletions() -> int:
    """Beat's retry: every unfinished deletion, oldest first; how many finished now."""
    pending = DeviceDeletion.objects.filter(finished_at__isnull=True).order_by("requested_at")
    return sum(purge_deleted_device(deletion) for deletion in pending[:RETRY_BATCH])


def queue_purge(deletion_id: int) -> None:
    """Sent by name: shards.tasks calls into this module, never the other way round."""
    try:
        celery_app.send_task(PURGE_TASK, args=(deletion_id,))
    except Exception as exc:  # the broker is down: beat's retry picks the deletion up
        logger.warning("deletion %s not queued (beat retries it): %r", deletion_id, exc)


def record_deletion(sender: type, instance: Device, using: str, **kwargs: Any) -> None:
    """post_delete of a Device: the tombstone commits with the delete, the purge after it."""
    device_id = instance.pk  # Django clears the instance's pk once the delete is done
    deletion = DeviceDeletion.objects.using(using).create(
        device_id=device_id, serial=instance.serial
    )
    transaction.on_commit(lambda: invalidate_placement(device_id), using=using)
    transaction.on_commit(lambda: queue_purge(deletion.pk), using=using)
