"""Removing a moved device's rows from its old shard, once no cache can still send readers there.

Runs only for jobs whose grace period is over, and only while the old shard's
fence row still says 'moved' (locked FOR UPDATE in the same transaction as the
deletes) and the directory names another shard: a device that has moved back
in the meantime is owned there again and is never touched.
"""

import logging

from django.utils import timezone

from core.models import MoveJob, Placement, Shard
from shards.fence import fence_state
from shards.models import DeviceFence
from shards.moves.copying import delete_device_rows
from shards.moves.streams import raw_connections
from shards.moves.tables import device_tables

logger = logging.getLogger(__name__)


def clean_up_move(job: MoveJob) -> dict[str, int]:
    """Delete the device's rows on the job's source shard; returns rows removed per table."""
    if job.phase != MoveJob.Phase.RELEASED:
        raise ValueError(f"move {job.pk} is {job.phase}, not released")
    if job.cleanup_after is not None and job.cleanup_after > timezone.now():
        raise ValueError(f"move {job.pk} may be cleaned up from {job.cleanup_after} on")
    removed: dict[str, int] = {}
    owner = Placement.objects.filter(device_id=job.device_id).values_list("shard", flat=True)
    with raw_connections(job.source_id) as (source,):
        with source.cursor() as cursor:
            state = fence_state(cursor, job.device_id, lock=True)
            if state == DeviceFence.State.MOVED and owner.first() != job.source_id:
                removed = delete_device_rows(cursor, job.device_id, device_tables())
            else:
                logger.info(
                    "move %s: %s owns device %s again (fence %s); nothing removed",
                    job.pk, job.source_id, job.device_id, state,
                )  # fmt: skip
        source.commit()
    job.phase = MoveJob.Phase.DONE
    job.finished_at = timezone.now()
    job.rows_copied = {**job.rows_copied, "removed_from_source": removed}
    job.save(update_fields=["phase", "finished_at", "rows_copied", "updated_at"])
    return removed


def clean_up_due_moves() -> list[MoveJob]:
    """Clean up every released job whose grace period is over; a failing shard is skipped."""
    due = MoveJob.objects.filter(phase=MoveJob.Phase.RELEASED, cleanup_after__lte=timezone.now())
    # A retired shard is never connected to again; its database goes away whole.
    retired = due.filter(source__state=Shard.State.RETIRED)
    retired.update(phase=MoveJob.Phase.DONE, finished_at=timezone.now())
    cleaned = []
    for job in due.exclude(source__state=Shard.State.RETIRED).order_by("id"):
        try:
            clean_up_move(job)
        except Exception:
            logger.exception("cleaning up move %s on %s failed; retried later", job.pk, job.source)
            continue
        cleaned.append(job)
    return cleaned
