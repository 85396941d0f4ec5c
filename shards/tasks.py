"""Celery tasks: import uploads, moves and drains, and per-shard analysis.

The ingest tasks are safe to run more than once: the import is idempotent and at-least-once
(acks_late, re-delivered when a worker dies), and a kick only queues an import.
"""

import logging

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from routers.errors import UnknownShard
from routers.registry import serving_shards
from shards import ingest
from shards.fence import DeviceMoved
from shards.import_queue import kick_import, release_kick

logger = logging.getLogger(__name__)


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def import_staged_uploads(alias: str) -> int:
    """Import a shard's staged uploads, many per transaction, until a claim finds none
    (shards.ingest.import_staged), holding the shard's kick (shards.import_queue).

    Then it releases the kick and looks once more, for uploads that committed while
    the kick was still held. A run whose time budget is spent queues its successor;
    one that fails (the shard down) leaves the uploads staged for a later kick.
    """

    def import_all() -> tuple[int, bool]:
        return ingest.import_staged(
            alias,
            batch=settings.IMPORT_BATCH_UPLOADS,
            budget_seconds=settings.IMPORT_BUDGET_SECONDS,
            pause_seconds=settings.IMPORT_PAUSE_SECONDS,
            max_readings=settings.IMPORT_CLAIM_READINGS,
        )

    try:
        try:
            imported, more = import_all()
        finally:
            release_kick(alias)
        if not more:
            last, more = import_all()
            imported += last
    except (OperationalError, InterfaceError, UnknownShard) as exc:
        logger.warning("importing staged uploads on %s failed; beat kicks it again: %r", alias, exc)
        return 0
    if more:
        kick_import(alias)
    return imported


@shared_task(ignore_result=True)
def kick_all_imports() -> list[str]:
    """Beat's entry: kick an import of every serving shard (uploads a kick missed)."""
    aliases = serving_shards()
    for alias in aliases:
        kick_import(alias)
    return aliases


@shared_task(
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError, InterfaceError, DeviceMoved),
    retry_backoff=True,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=20,
)
def import_upload(device_id: int, upload_id: int) -> str:
    """Import one staged upload: what nodes of earlier versions queued per upload."""
    return ingest.import_upload_now(device_id, upload_id)


@shared_task(ignore_result=True)
def clean_up_moved_devices() -> int:
    """Remove moved devices' rows from their old shards once the grace period is over."""
    from shards.moves.cleanup import clean_up_due_moves

    return len(clean_up_due_moves())


@shared_task(acks_late=True, reject_on_worker_lost=True)
def purge_deleted_device(deletion_id: int) -> bool:
    """Remove a deleted device's rows from the shards (shards.deletion); True when done."""
    from core.models import DeviceDeletion
    from shards.deletion import purge_deleted_device as purge

    deletion = DeviceDeletion.objects.filter(pk=deletion_id, finished_at__isnull=True).first()
    return True if deletion is None else purge(deletion)


@shared_task(ignore_result=True)
def purge_pending_deletions() -> int:
    """Beat's retry of device deletions that a shard being down or a lost task left over."""
    from shards.deletion import purge_pending_deletions as purge

    return purge()


@shared_task(acks_late=True, reject_on_worker_lost=True)
def run_move_job(job_id: int) -> str:
    """Run (or resume) a recorded move job in the background; returns its final phase.

    A worker killed mid-move has the task delivered again, which resumes the job.
    """
    from core.models import MoveJob
    from shards.moves.protocol import MoveError, run_move

    job = MoveJob.objects.get(pk=job_id)
    try:
        run_move(job)
    except MoveError as exc:
        logger.warning("move job %s: %s", job_id, exc)
    job.refresh_from_db()
    return job.phase


# A rebalance or drain task that finds another runner busy tries again this often, so
# long (about half an hour all told); a queued run left over is run by `rebalance --resume`.
RUNNER_BUSY_RETRY_SECONDS = 30
RUNNER_BUSY_RETRIES = 60


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True)
def rebalance_run(self, run_id: int) -> str:
    """Run a rebalance that `rebalance --background` queued; returns the run's final state.

    A worker killed mid-run has the task delivered again, which resumes the run.
    While another rebalance or drain holds the runner lock it tries again later.
    """
    from shards.rebalance.background import is_queued, run_queued
    from shards.rebalance.locks import RebalanceBusy

    try:
        return run_queued(run_id)
    except RebalanceBusy as exc:
        if not is_queued(run_id):
            logger.info("rebalance %s: %s", run_id, exc)  # run by someone else meanwhile
            return "busy"
        raise self.retry(
            exc=exc, countdown=RUNNER_BUSY_RETRY_SECONDS, max_retries=RUNNER_BUSY_RETRIES
        ) from exc


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True)
def drain_shard(
    self,
    alias: str,
    cost: str = "rows",
    include_pinned: bool = False,
    options: dict | None = None,
) -> dict:
    """Drain a shard in the background (the admin's drain action, `drain_shard --background`);
    returns its retire status.

    The same steps as `manage.py drain_shard`, on the same runner: finish interrupted
    moves, continue an interrupted drain of this shard, move what is left (with
    `options`: RunOptions fields that differ from the defaults, also for an interrupted
    drain it continues), retire it if it can be. A worker
    killed mid-drain has the task delivered again, which continues where it
    stopped, as running the command again does. While another rebalance or drain
    holds the runner lock it tries again later.
    """
    from shards.rebalance.drain import try_retire
    from shards.rebalance.drain_run import move_devices_off
    from shards.rebalance.locks import RebalanceBusy

    try:
        move_devices_off(alias, cost, include_pinned=include_pinned, options=options)
    except RebalanceBusy as exc:
        raise self.retry(
            exc=exc, countdown=RUNNER_BUSY_RETRY_SECONDS, max_retries=RUNNER_BUSY_RETRIES
        ) from exc
    status = try_retire(alias)
    logger.info("drain of %s: %s", alias, status.message())
    return status.as_json()


@shared_task(ignore_result=True)
def analyse_shard(alias: str) -> dict:
    """One analysis run of one shard (shards.analysis.run); skips if one is running there.

    Devices are looked up afresh through their fences when it runs, never
    trusted from when it was queued.
    """
    from shards.analysis.run import analyse_shard as run_analysis

    return run_analysis(alias)


@shared_task(ignore_result=True)
def analyse_all_shards() -> list[str]:
    """Beat's entry: queue one analysis run per serving shard, for the workers to share.

    Each run expires after ANALYSIS_INTERVAL_SECONDS: one that no worker started
    by then is dropped, as the next beat tick queues a fresh one.
    """
    aliases = serving_shards()
    for alias in aliases:
        analyse_shard.apply_async((alias,), expires=settings.ANALYSIS_INTERVAL_SECONDS)
    return aliases
