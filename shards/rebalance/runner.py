"""Running a rebalance or drain: its planned moves one after another, recorded as it goes.

The plan is stored in the Rebalance row before the first move, and each entry
gets its outcome (moved, failed, skipped) and move job as soon as it has one,
so a run killed anywhere can be resumed: `resume` first finishes the move jobs
no process is running, then settles each planned entry from its job, then
makes the moves still pending. Between moves the runner re-reads its row, so
`request_stop` (another process) stops it after the current move. A move that
fails is recorded and the run goes on with the next.
"""

from typing import Any

from django.db import transaction
from django.utils import timezone

from core.models import MoveJob, Placement, Rebalance, Shard
from routers.aliases import DIRECTORY_ALIAS
from shards.moves.protocol import (
    MoveError,
    PhaseCallback,
    interrupted_moves,
    move_device,
    run_move,
)
from shards.rebalance.locks import ACTIVE_STATES, RebalanceBusy, RunnerLock, lock_holder
from shards.rebalance.planner import Plan

State = Rebalance.State
PENDING, MOVED, FAILED, SKIPPED = "pending", "moved", "failed", "skipped"
Entry = dict[str, Any]


class RebalanceError(Exception):
    """A request about runs that cannot be done; the message says why."""


class Observer:
    """What a command hears about a run (progress bars); the default hears nothing."""

    def run_started(self, run: Rebalance, pending: int) -> None:
        pass

    def move_started(self, entry: Entry) -> PhaseCallback | None:
        return None

    def move_finished(self, entry: Entry) -> None:
        pass

    def job_resuming(self, job: MoveJob) -> PhaseCallback | None:
        return None

    def job_resumed(self, job: MoveJob, error: str) -> None:
        pass

    def run_finished(self, run: Rebalance) -> None:
        pass


def plan_entries(plan: Plan) -> list[Entry]:
    """The plan as stored in Rebalance.plan: each move with its outcome, pending at first."""
    return [{**move.as_json(), "status": PENDING, "job": None, "error": ""} for move in plan.moves]


def check_kind(kind: str) -> str:
    """Refuse a kind the Rebalance row cannot hold (drain:<a long alias>) before any change."""
    limit = Rebalance._meta.get_field("kind").max_length or 0
    if len(kind) > limit:
        raise RebalanceError(
            f"cannot record a run of kind {kind!r}: Rebalance.kind holds {limit} characters"
        )
    return kind


def create_run(lock: RunnerLock, *, kind: str, cost: str, plan: Plan) -> Rebalance:
    """Record a run and claim it in one step, so it never looks interrupted to others."""
    check_kind(kind)
    with transaction.atomic(using=DIRECTORY_ALIAS):
        run = Rebalance.objects.create(
            kind=kind,
            cost=cost,
            state=State.RUNNING,
            plan=plan_entries(plan),
            loads_before=plan.loads_before,
        )
        lock.claim(run)
    return run


def _state_of(run: Rebalance) -> str | None:
    return Rebalance.objects.filter(pk=run.pk).values_list("state", flat=True).first()


def _why_skip(entry: Entry) -> str:
    """A reason not to make a planned move any more (the world changed since the plan)."""
    placement = Placement.objects.filter(device_id=entry["device"]).first()
    if placement is None:
        return "the device no longer exists"
    if placement.shard_id != entry["source"]:
        return f"the device is on {placement.shard_id} now, not {entry['source']}"
    if placement.pinned and not entry.get("pinned"):
        return "the device was pinned after the plan was made"
    if Shard.objects.filter(alias=entry["target"], weight=0).exists():
        return f"{entry['target']} has weight 0 now (dedicated)"
    busy = MoveJob.objects.filter(device_id=entry["device"], phase__in=MoveJob.IN_FLIGHT).first()
    if busy is not None:
        return f"the device is being moved by move job {busy.pk}"
    return ""


def _make_move(run: Rebalance, entry: Entry, on_phase: PhaseCallback | None) -> None:
    """Make one planned move and write its outcome into the entry."""
    reason = _why_skip(entry)
    if reason:
        entry.update(status=SKIPPED, error=reason)
        return
    try:
        job = move_device(
            entry["device"],
            entry["target"],
            rebalance=run,
            requested_by=f"{run.kind} {run.pk}",
            on_phase=on_phase,
        )
    except MoveError as exc:
        job = run.moves.filter(device_id=entry["device"]).order_by("-id").first()
        entry.update(status=FAILED, error=str(exc), job=job.pk if job else None)
        return
    entry.update(status=MOVED, job=job.pk, error="")


def _failures(run: Rebalance) -> str:
    """The run's error text: how many moves failed, and why."""
    failed = [entry for entry in run.plan if entry["status"] == FAILED]
    if not failed:
        return ""
    details = "; ".join(f"device {e['serial'] or e['device']}: {e['error']}" for e in failed)
    return f"{len(failed)} of {len(run.plan)} moves failed: {details}"


def _finish(run: Rebalance) -> Rebalance:
    """Close the run: stopped if moves are left (a stop was asked), else finished."""
    left = sum(1 for entry in run.plan if entry["status"] == PENDING)
    Rebalance.objects.filter(pk=run.pk).update(
        state=State.STOPPED if left else State.FINISHED,
        error=_failures(run),
        finished_at=timezone.now(),
    )
    run.refresh_from_db()
    return run


def execute(run: Rebalance, lock: RunnerLock, observer: Observer | None = None) -> Rebalance:
    """Make the run's pending moves in order; the caller holds `exclusive_runner()`."""
    observer = observer or Observer()
    lock.claim(run)
    pending = [entry for entry in run.plan if entry["status"] == PENDING]
    observer.run_started(run, len(pending))
    try:
        for entry in pending:
            if _state_of(run) in (State.STOPPING, State.STOPPED):
                break
            _make_move(run, entry, observer.move_started(entry))
            run.save(update_fields=["plan"])
            observer.move_finished(entry)
        _finish(run)
    except Exception as exc:
        # Not a failed move (those are recorded and passed over): the directory or
        # a shard failed under the runner, so the run stops here.
        Rebalance.objects.filter(pk=run.pk).update(
            state=State.FAILED, error=f"stopped by an error: {exc}", finished_at=timezone.now()
        )
        run.refresh_from_db()
        raise
    finally:
        lock.release(run)
    observer.run_finished(run)
    return run


def interrupted_runs() -> list[Rebalance]:
    """Runs left running (or stopping) that no process holds: their runner died."""
    runs = Rebalance.objects.filter(state__in=ACTIVE_STATES).order_by("id")
    return [run for run in runs if lock_holder(run.pk) is None]


def refuse_interrupted(*, except_kind: str = "") -> list[Rebalance]:
    """Refuse to start anew over an interrupted run; returns those of `except_kind`."""
    mine = []
    for run in interrupted_runs():
        if run.kind == except_kind:
            mine.append(run)
            continue
        left = sum(1 for entry in run.plan if entry["status"] == PENDING)
        raise RebalanceBusy(
            f"{run.kind} {run.pk} was interrupted with {left} of {len(run.plan)} moves left:"
            f" `rebalance --resume` continues it, `rebalance --stop {run.pk}` abandons it"
        )
    return mine


def settle_from_jobs(run: Rebalance) -> None:
    """Give pending entries the outcome of the move job the run already made for them."""
    latest = {job.device_id: job for job in run.moves.order_by("id")}
    for entry in run.plan:
        job = latest.get(entry["device"])
        if entry["status"] not in (PENDING, FAILED) or job is None:
            continue
        if job.phase in (MoveJob.Phase.RELEASED, MoveJob.Phase.DONE):
            # Also a move that failed after the switch and was finished by a resume.
            entry.update(status=MOVED, job=job.pk, error="")
        elif entry["status"] == PENDING:
            error = job.error or f"move job {job.pk} stopped at phase {job.phase}"
            entry.update(status=FAILED, job=job.pk, error=error)
    run.save(update_fields=["plan"])
    if run.state not in ACTIVE_STATES:
        Rebalance.objects.filter(pk=run.pk).update(error=_failures(run))
        run.refresh_from_db()


def finish_interrupted_moves(observer: Observer | None = None) -> list[MoveJob]:
    """Run every move job no process is running to its end (or roll it back)."""
    observer = observer or Observer()
    jobs = interrupted_moves()
    for job in jobs:
        error = ""
        try:
            run_move(job, on_phase=observer.job_resuming(job))
        except MoveError as exc:
            error = str(exc)
        job.refresh_from_db()
        observer.job_resumed(job, error)
    # Runs that are over but counted such a job as failed learn that it got through.
    for run in {job.rebalance for job in jobs if job.rebalance_id}:
        if run.state not in ACTIVE_STATES:
            settle_from_jobs(run)
    return jobs


def resume_run(run: Rebalance, lock: RunnerLock, observer: Observer | None = None) -> Rebalance:
    """Continue an interrupted run: settle what its jobs did, then make the rest."""
    lock.claim(run)
    settle_from_jobs(run)
    if _state_of(run) != State.RUNNING:  # a stop was asked before it died
        lock.release(run)
        return _finish(run)
    return execute(run, lock, observer)


def request_stop(run_id: int | None = None) -> tuple[Rebalance, str]:
    """Ask a running run to stop after its current move; an interrupted one stops now."""
    if run_id is None:
        run = Rebalance.objects.filter(state__in=ACTIVE_STATES).order_by("-id").first()
        if run is None:
            raise RebalanceError("no rebalance or drain is running")
    else:
        run = Rebalance.objects.filter(pk=run_id).first()
        if run is None:
            raise RebalanceError(f"there is no rebalance run {run_id}")
    if run.state not in ACTIVE_STATES:
        raise RebalanceError(f"{run.kind} {run.pk} is {run.state}: there is nothing to stop")
    holder = lock_holder(run.pk)
    if holder:
        Rebalance.objects.filter(pk=run.pk, state=State.RUNNING).update(state=State.STOPPING)
        run.refresh_from_db()
        return run, f"asked {run.kind} {run.pk} ({holder}) to stop after its current move"
    Rebalance.objects.filter(pk=run.pk).update(
        state=State.STOPPED,
        error="stopped while no process was running it",
        finished_at=timezone.now(),
    )
    run.refresh_from_db()
    message = f"{run.kind} {run.pk} was not running (interrupted); marked stopped"
    stuck = run.moves.filter(phase__in=MoveJob.IN_FLIGHT).values_list("pk", flat=True)
    if stuck:
        jobs = ", ".join(str(pk) for pk in stuck)
        message += (
            f". Its move job(s) {jobs} are still in flight: `rebalance --resume`"
            " (or `move_device --resume`) finishes them"
        )
    return run, message
