"""The online move of one device between shards, as a job recorded phase by phase.

created   target fence 'pending' (leftover rows there removed), source fence
          'copying' (writes go on, deletes wait) and its changes logged from
          now on (shards.moves.capture)                            -> copying
copying   bulk copy in one source snapshot, verified against that snapshot
          (counts and checksums per table; a mismatch rolls the job back);
          the changes logged meanwhile copied by key, while writes go on; then
          the source fence is set to 'fenced' (waits for in-flight writers,
          holds new ones)                                          -> fenced
fenced    copy the changes logged since, and verify every changed row key by
          key: the writers' stall costs what changed during the move, not
          what the device holds                                   -> verified
verified  target fence 'active' with the new epoch                 -> activated
activated the directory's placement names the target, in the same
          transaction as the phase; caches get the new placement   -> switched
switched  source fence 'moved': held writers wake, drop their
          cached placement and write on the target                 -> released
released  after MOVE_CLEANUP_GRACE_SECONDS, cleanup.py removes the
          source rows                                              -> done

Each phase is recorded in the directory only once its effects are durable,
and each step can run again, so a crash anywhere is finished by resuming the
job, or (before `switched`) undone by rolling it back. The source is never
reopened after the directory names the target, and the target is activated
only while the source is fenced, so no device is ever active on two shards.
"""

import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connections, transaction
from django.utils import timezone

from core.models import MoveJob, Placement, Rebalance, Shard
from routers.aliases import DIRECTORY_ALIAS
from routers.placement import remember_placement
from routers.registry import ensure_shard_connection
from routers.silos import shard_apps
from shards.advisory import holding, lock_holder
from shards.fence import (
    close_gate,
    fence_state,
    fence_state_and_since,
    open_pending,
    remove_fence,
    set_fence,
)
from shards.models import DeviceFence
from shards.moves.capture import (
    changes_since,
    start_capture,
    stop_capture,
    tables_without_capture,
)
from shards.moves.copying import copy_changed_rows, copy_device_rows, delete_device_rows
from shards.moves.streams import raw_connection, raw_connections
from shards.moves.tables import DeviceTable, device_tables
from shards.moves.verify import Verification, verify_bulk, verify_changed_rows

logger = logging.getLogger(__name__)

Phase = MoveJob.Phase
Fence = DeviceFence.State
# pg_advisory_lock(namespace, job id): one process runs a given job at a time.
MOVE_LOCK_NAMESPACE = 7401
# The mover waits this long for in-flight writers when fencing, then gives up.
FENCE_LOCK_TIMEOUT = "15s"
# Before fencing, logged changes are copied in passes while writes go on, until a pass
# finds at most this many (or after CATCH_UP_PASSES): the fenced pass then has little left.
CATCH_UP_QUIET = 100
CATCH_UP_PASSES = 5

PhaseCallback = Callable[[MoveJob], None]


class MoveError(Exception):
    """A move refused or abandoned; the message says why and what to do."""


class MoveVerificationFailed(MoveError):
    """The copy did not match the source; the job was rolled back."""


def _crash_point(name: str) -> None:
    """Test hook: FLEET_MOVE_CRASH_AFTER=<name> kills the mover right here, like kill -9."""
    if name == settings.MOVE_CRASH_AFTER:
        logger.warning("FLEET_MOVE_CRASH_AFTER=%s: killing the mover", name)
        os.kill(os.getpid(), signal.SIGKILL)


def _applied_shard_migrations(alias: str) -> set[tuple[str, str]]:
    ensure_shard_connection(alias)
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT app, name FROM django_migrations WHERE app = ANY(%s)",
            [sorted(shard_apps())],
        )
        return set(cursor.fetchall())


def start_move(
    device_id: int,
    target: str,
    *,
    rebalance: Rebalance | None = None,
    requested_by: str = "",
) -> MoveJob:
    """Record a move job for a device after checking it can be done; nothing moves yet."""
    placement = Placement.objects.filter(device_id=device_id).first()
    if placement is None:
        raise MoveError(f"device {device_id} does not exist")
    target_shard = Shard.objects.filter(alias=target).first()
    if target_shard is None:
        raise MoveError(f"shard {target!r} is not registered")
    if target_shard.state != Shard.State.ACTIVE:
        raise MoveError(f"shard {target} is {target_shard.state}; devices move to active shards")
    if placement.shard_id == target:
        raise MoveError(f"device {device_id} is already on {target}")
    if _applied_shard_migrations(placement.shard_id) != _applied_shard_migrations(target):
        raise MoveError(
            f"{placement.shard_id} and {target} have different shard migrations applied;"
            " run `manage.py migrate_shards` first"
        )
    with connections[placement.shard_id].cursor() as cursor:
        uncaptured = tables_without_capture(cursor, device_tables())
    if uncaptured:
        raise MoveError(
            f"{placement.shard_id} does not log changes of {', '.join(uncaptured)};"
            " run `manage.py migrate_shards` first"
        )
    try:
        with transaction.atomic(using=DIRECTORY_ALIAS):
            return MoveJob.objects.create(
                device_id=device_id,
                source_id=placement.shard_id,
                target=target_shard,
                rebalance=rebalance,
                epoch=placement.epoch + 1,
                requested_by=requested_by,
            )
    except IntegrityError:
        busy = MoveJob.objects.filter(device_id=device_id, phase__in=MoveJob.IN_FLIGHT).first()
        raise MoveError(
            f"device {device_id} is already being moved by job {busy.pk if busy else '?'}"
            " (resume it with `manage.py move_device --resume`)"
        ) from None


@contextmanager
def _job_lock(job: MoveJob) -> Iterator[None]:
    """Hold the job's advisory lock on the directory; a second runner is refused."""
    holder = f"fleet-move job {job.pk} pid {os.getpid()}"
    with holding(DIRECTORY_ALIAS, MOVE_LOCK_NAMESPACE, job.pk, holder=holder) as acquired:
        if not acquired:
            raise MoveError(f"move job {job.pk} is being run by another process")
        yield


def is_running_elsewhere(job: MoveJob) -> bool:
    """True when a live process holds the job's lock (so it is not interrupted)."""
    return lock_holder(DIRECTORY_ALIAS, MOVE_LOCK_NAMESPACE, job.pk) is not None


# Phases whose record may be lost in a crash: resuming from the phase before redoes an
# idempotent step. Their commits need not wait for the directory's disk, which keeps
# the fenced window short. The switch (the placement with its phase) always waits.
REDOABLE_RECORDS = (Phase.FENCED, Phase.VERIFIED, Phase.ACTIVATED, Phase.RELEASED)


def _advance(job: MoveJob, phase: str, **fields: Any) -> None:
    """Record the job's next phase. The error an earlier attempt left (a connection lost
    under a resume, say) is over once the job moves on, unless `fields` give one."""
    fields.setdefault("error", "")
    job.phase = phase
    for name, value in fields.items():
        setattr(job, name, value)
    with transaction.atomic(using=DIRECTORY_ALIAS):
        if phase in REDOABLE_RECORDS:
            with connections[DIRECTORY_ALIAS].cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit = off")
        job.save()


class _Mover:
    """Runs one job's remaining phases over raw connections to its two shards."""

    def __init__(self, job: MoveJob, source: Any, target: Any, tables: list[DeviceTable]):
        self.job = job
        self.source = source
        self.target = target
        self.tables = tables
        self.fence_started: float | None = None
        self.gate: Any = None  # its own source connection, open while writers are held

    @property
    def device_id(self) -> int:
        return self.job.device_id

    def hold_writers(self) -> None:
        """Close the gate writers and readers that meet 'fenced' queue at (shards.fence)."""
        if self.gate is None:
            self.gate = raw_connection(self.job.source_id)
            with self.gate.cursor() as cursor:
                cursor.execute(f"SET LOCAL lock_timeout = '{FENCE_LOCK_TIMEOUT}'")
                close_gate(cursor, self.device_id)

    def let_writers_go(self) -> None:
        """Open the gate: once the fence no longer says 'fenced', its waiters read it again."""
        if self.gate is not None:
            gate, self.gate = self.gate, None
            gate.close()

    def prepare(self) -> None:
        """Target: clear leftovers, fence row 'pending'. Source: 'copying' (no deletes)."""
        with self.target.cursor() as cursor:
            state = fence_state(cursor, self.device_id, lock=True)
            if state in (Fence.ACTIVE, Fence.COPYING, Fence.FENCED):
                raise MoveError(
                    f"{self.job.target_id} already owns device {self.device_id} (fence {state})"
                )
            delete_device_rows(cursor, self.device_id, self.tables)
            open_pending(cursor, self.device_id, self.job.epoch)
        self.target.commit()
        with self.source.cursor() as cursor:
            cursor.execute(f"SET LOCAL lock_timeout = '{FENCE_LOCK_TIMEOUT}'")
            # One transaction: the fence UPDATE waits for every writer in flight, and every
            # write after it commits sees the registration, so no change goes unlogged.
            start_capture(cursor, self.device_id)
            owned = (Fence.ACTIVE, Fence.COPYING, Fence.FENCED)
            if not set_fence(cursor, self.device_id, Fence.COPYING, owned):
                raise MoveError(
                    f"{self.job.source_id} does not own device {self.device_id}"
                    f" (fence {fence_state(cursor, self.device_id)})"
                )
        self.source.commit()
        _advance(self.job, Phase.COPYING)

    def bulk_copy_and_fence(self) -> None:
        """Copy everything in one snapshot and verify it, then catch up with what changed
        meanwhile, all while writers go on; then fence the source."""
        rows, snapshot, since, source_sums = copy_device_rows(
            self.source, self.target, self.device_id, self.tables
        )
        verification = verify_bulk(
            source_sums, self.source, self.target, self.device_id, self.tables
        )
        # The bulk copy's counts and checksums per table; "changes" joins them later.
        self.job.verification = verification.as_json()
        if not verification.ok:
            self._fail_verification(verification)
        self.job.snapshot = snapshot
        self.job.changes_horizon = since
        self.job.rows_copied = {"bulk": rows}
        self.job.save(
            update_fields=[
                "snapshot", "changes_horizon", "rows_copied", "verification", "updated_at"
            ]
        )  # fmt: skip
        _crash_point("copied")
        self.catch_up()
        self.hold_writers()
        with self.source.cursor() as cursor:
            cursor.execute(f"SET LOCAL lock_timeout = '{FENCE_LOCK_TIMEOUT}'")
            state, since = fence_state_and_since(cursor, self.device_id)
            if state == Fence.FENCED:
                # Fenced by this job before a crash: writers have waited since then.
                fenced_at = since
            else:
                self.fence_started = time.monotonic()
                fenced_at = timezone.now()
                # Waits for writers holding the row FOR SHARE; new ones queue behind it.
                if not set_fence(cursor, self.device_id, Fence.FENCED, (Fence.COPYING,)):
                    raise MoveError(
                        f"device {self.device_id}'s fence on {self.job.source_id} is"
                        f" {fence_state(cursor, self.device_id)}, not copying"
                    )
        self.source.commit()
        _crash_point("fence_committed")
        _advance(self.job, Phase.FENCED, fenced_at=fenced_at)

    def copy_changes(self) -> dict[str, int]:
        """Copy and check the changes logged by transactions from the job's horizon on,
        then move the horizon; a copy that differs fails the job."""
        rows, since, hashes = copy_changed_rows(
            self.source, self.target, self.device_id, self.tables, since=self.job.changes_horizon
        )
        verification = verify_changed_rows(hashes, self.target, self.device_id, self.tables)
        checked = self.job.verification.setdefault("changes", {"ok": True, "passes": []})
        checked["passes"].append(verification.as_json())
        checked["ok"] = checked["ok"] and verification.ok
        if not verification.ok:
            self.job.verification["ok"] = False
            self.job.verification["mismatches"] += verification.mismatches
            self._fail_verification(verification)
        self.job.changes_horizon = since
        return rows

    def pending_changes(self) -> int:
        with self.source.cursor() as cursor:
            pending = changes_since(cursor, self.device_id, self.job.changes_horizon)
        self.source.rollback()
        return pending

    def catch_up(self) -> None:
        """Copy the logged changes in passes while writers go on, until few are left."""
        passes = []
        for _ in range(CATCH_UP_PASSES):
            pending = self.pending_changes()
            if not pending:
                break
            passes.append(self.copy_changes())
            self.job.save(update_fields=["changes_horizon", "verification", "updated_at"])
            if pending <= CATCH_UP_QUIET:
                break
        self.job.rows_copied = {**self.job.rows_copied, "catch_up": passes}
        self.job.save(update_fields=["rows_copied", "updated_at"])

    def _fail_verification(self, verification: Verification) -> None:
        self.job.save(update_fields=["verification", "rows_copied", "updated_at"])
        keys = "; ".join(
            f"{m['table']} {m['key']}: {m['problem']}" for m in verification.mismatches
        )
        raise MoveVerificationFailed(
            f"the copy of device {self.device_id} on {self.job.target_id} does not match"
            f" {self.job.source_id}: {keys or 'checksums differ'}"
        )

    def copy_remainder_and_verify(self) -> None:
        """With the source still, copy and check what changed since the last pass: the
        writers wait for this pass's few changes only."""
        rows = self.copy_changes()
        self.job.rows_copied = {**self.job.rows_copied, "remainder": rows}
        _advance(self.job, Phase.VERIFIED)

    def activate_target(self) -> None:
        with self.target.cursor() as cursor:
            done = set_fence(
                cursor,
                self.device_id,
                Fence.ACTIVE,
                (Fence.PENDING, Fence.ACTIVE),
                epoch=self.job.epoch,
            )
            if not done:
                raise MoveError(
                    f"device {self.device_id}'s fence on {self.job.target_id} is"
                    f" {fence_state(cursor, self.device_id)}, not pending"
                )
        self.target.commit()
        _advance(self.job, Phase.ACTIVATED)

    def switch_directory(self) -> None:
        """Point the placement at the target, atomically with recording the phase."""
        now = timezone.now()
        with transaction.atomic(using=DIRECTORY_ALIAS):
            placement = Placement.objects.select_for_update().get(device_id=self.device_id)
            if placement.shard_id == self.job.source_id:
                placement.shard_id = self.job.target_id
                placement.epoch = self.job.epoch
                placement.save(update_fields=["shard", "epoch", "updated_at"])
            elif placement.shard_id != self.job.target_id:
                raise MoveError(
                    f"device {self.device_id} is placed on {placement.shard_id}, which is"
                    " neither end of this move"
                )
            _advance(
                self.job,
                Phase.SWITCHED,
                switched_at=now,
                cleanup_after=now + timedelta(seconds=settings.MOVE_CLEANUP_GRACE_SECONDS),
            )
        remember_placement(self.device_id, self.job.target_id)

    def release_writers(self) -> None:
        """Source fence 'moved': held writers wake, look the device up again, land on target."""
        with self.source.cursor() as cursor:
            set_fence(
                cursor,
                self.device_id,
                Fence.MOVED,
                (Fence.FENCED, Fence.COPYING, Fence.MOVED),
                epoch=self.job.epoch,
            )
            stop_capture(cursor, self.device_id)
        self.source.commit()
        self.let_writers_go()
        if self.fence_started is not None:
            stall_ms = (time.monotonic() - self.fence_started) * 1000
        else:  # resumed after a crash: the whole time since fencing, crash included
            stall_ms = (timezone.now() - self.job.fenced_at).total_seconds() * 1000
        _advance(self.job, Phase.RELEASED, stall_ms=round(stall_ms, 1))

    def roll_back(self, phase: str, error: str) -> None:
        """Undo an unswitched job: target rows and fence removed, then the source reopened."""
        with self.target.cursor() as cursor:
            fence_state(cursor, self.device_id, lock=True)
            delete_device_rows(cursor, self.device_id, self.tables)
            remove_fence(cursor, self.device_id, (Fence.PENDING, Fence.ACTIVE))
        self.target.commit()
        with self.source.cursor() as cursor:
            set_fence(
                cursor, self.device_id, Fence.ACTIVE, (Fence.COPYING, Fence.FENCED, Fence.ACTIVE)
            )
            stop_capture(cursor, self.device_id)
        self.source.commit()
        self.let_writers_go()
        _advance(self.job, phase, error=error, finished_at=timezone.now())


_STEPS = {
    Phase.CREATED: _Mover.prepare,
    Phase.COPYING: _Mover.bulk_copy_and_fence,
    Phase.FENCED: _Mover.copy_remainder_and_verify,
    Phase.VERIFIED: _Mover.activate_target,
    Phase.ACTIVATED: _Mover.switch_directory,
    Phase.SWITCHED: _Mover.release_writers,
}


def run_move(job: MoveJob, *, on_phase: PhaseCallback | None = None) -> MoveJob:
    """Run a job from its recorded phase until writers are released (or it is rolled back).

    A failed verification rolls the job back (phase 'failed') and raises
    MoveVerificationFailed. Any other error before the switch also rolls back,
    so a fenced device is not left holding its writers; if even that fails, the
    job stays where it was for `--resume` or `--rollback`.
    """
    with _job_lock(job):
        job.refresh_from_db()
        with raw_connections(job.source_id, job.target_id) as (source, target):
            mover = _Mover(job, source, target, device_tables())
            try:
                _run_steps(mover, on_phase)
            finally:
                mover.let_writers_go()  # a job left fenced: its waiters go back to polling
    return job


def _run_steps(mover: _Mover, on_phase: PhaseCallback | None) -> None:
    """The job's remaining phases, each recorded; an unswitched job that fails rolls back."""
    job = mover.job
    if job.phase in MoveJob.HOLDING_WRITERS:  # resumed: writers queue at the gate again
        mover.hold_writers()
    while job.phase in _STEPS:
        try:
            _STEPS[job.phase](mover)
        except Exception as exc:
            if mover.source.closed or mover.target.closed:
                # The server went away mid-step (a failover, a restart): neither rolling
                # back nor going on is possible from here, and nothing half-done was
                # committed. The job stays at its phase for `--resume` once both answer.
                job.error = f"lost its connection to a shard: {exc}".strip()
                job.save(update_fields=["error", "updated_at"])
                raise MoveError(
                    f"move {job.pk} interrupted at {job.phase}: lost its connection to a shard"
                    f" ({str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r});"
                    " run `manage.py move_device --resume` once both shards answer"
                ) from exc
            mover.source.rollback()
            mover.target.rollback()
            if job.phase not in MoveJob.UNSWITCHED:
                job.error = str(exc)
                job.save(update_fields=["error", "updated_at"])
                raise
            failed = isinstance(exc, MoveVerificationFailed)
            logger.warning("move %s: %s; rolling back", job.pk, exc)
            mover.roll_back(Phase.FAILED if failed else Phase.ROLLED_BACK, str(exc))
            if isinstance(exc, MoveError):
                raise
            raise MoveError(f"move {job.pk} rolled back: {exc}") from exc
        if on_phase is not None:
            on_phase(job)
        _crash_point(job.phase)


def move_device(
    device_id: int,
    target: str,
    *,
    rebalance: Rebalance | None = None,
    requested_by: str = "",
    on_phase: PhaseCallback | None = None,
) -> MoveJob:
    """Move a device online to `target`: start a job and run it until writers are released."""
    job = start_move(device_id, target, rebalance=rebalance, requested_by=requested_by)
    if on_phase is not None:
        on_phase(job)
    _crash_point(Phase.CREATED)
    return run_move(job, on_phase=on_phase)


def interrupted_moves() -> list[MoveJob]:
    """Jobs in flight that no live process is running: left by a crash or a kill."""
    jobs = MoveJob.objects.filter(phase__in=MoveJob.IN_FLIGHT).order_by("id")
    return [job for job in jobs if not is_running_elsewhere(job)]


def rollback_move(job: MoveJob) -> MoveJob:
    """Undo a job that has not switched the directory; a switched job can only go forward."""
    with _job_lock(job):
        job.refresh_from_db()
        if job.phase not in MoveJob.UNSWITCHED:
            raise MoveError(
                f"move {job.pk} is {job.phase}: only a job that has not switched the"
                " directory can be rolled back; resume it instead"
            )
        with raw_connections(job.source_id, job.target_id) as (source, target):
            _Mover(job, source, target, device_tables()).roll_back(
                Phase.ROLLED_BACK, "rolled back by an operator"
            )
    return job
