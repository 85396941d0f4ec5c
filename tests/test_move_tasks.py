"""The Celery side of moves: a move job run by a real worker, and the cleanup task."""

import time
from datetime import timedelta

from django.utils import timezone

from core.models import MoveJob, Placement
from shards.models import Reading
from shards.moves.protocol import start_move
from shards.tasks import clean_up_moved_devices, run_move_job
from tests.factories import make_device, reading_times


def wait_for_phase(job: MoveJob, phase: str, timeout: float = 60) -> MoveJob:
    deadline = time.monotonic() + timeout
    while job.phase != phase:
        assert time.monotonic() < deadline, f"move {job.pk} stuck in {job.phase}"
        time.sleep(0.2)
        job.refresh_from_db()
    return job


def test_a_recorded_move_runs_on_the_worker_and_old_rows_go_after_the_grace(shards, celery_worker):
    device = make_device(shard="shard_1").device
    Reading.objects.on_shard("shard_1").bulk_create(
        Reading(device_id=device.pk, metric="t", ts=ts, value=1.0) for ts in reading_times(50)
    )
    job = start_move(device.pk, "shard_2", requested_by="test")

    run_move_job.delay(job.pk)

    job = wait_for_phase(job, MoveJob.Phase.RELEASED)
    assert job.verification["ok"]
    assert Placement.objects.get(device=device).shard_id == "shard_2"
    assert Reading.objects.on_shard("shard_2").filter(device_id=device.pk).count() == 50

    # Not before the grace period is over (the worker's default: minutes away).
    assert clean_up_moved_devices() == 0
    assert Reading.objects.on_shard("shard_1").filter(device_id=device.pk).count() == 50
    MoveJob.objects.filter(pk=job.pk).update(cleanup_after=timezone.now() - timedelta(seconds=1))
    assert clean_up_moved_devices() == 1
    assert Reading.objects.on_shard("shard_1").filter(device_id=device.pk).count() == 0
    job.refresh_from_db()
    assert job.phase == MoveJob.Phase.DONE
