"""Running a rebalance or drain: its planned moves, several at once, recorded as they go.

The plan is stored in the Rebalance row before the first move, with the options
it runs with (shards.rebalance.options), and each entry gets its outcome (moved,
failed, skipped) and move job as soon as it has one (shards.rebalance.parallel
makes the moves), so a run killed anywhere, with any number of moves in flight,
can be resumed: `resume` first finishes the move jobs no process is running,
then settles each planned entry from its job, then makes the moves still
pending. `request_stop` (from any process) makes the runner start no new move
and return once the moves in flight have ended. A move that fails is recorded
and the run goes on with the others.

A run queued for a Celery worker (`rebalance --background`) is recorded as
'queued' and claimed by whoever starts it first: the worker, or a `--resume`.
"""

from django.db import transaction
from django.utils import timezone

from core.models import MoveJob, Rebalance
from routers.aliases import DIRECTORY_ALIAS
from shards.moves.protocol import MoveError, interrupted_moves, run_move
from shards.rebalance.entries import FAILED, MOVED, PENDING, plan_entries
from shards.rebalance.locks import ACTIVE_STATES, RebalanceBusy, RunnerLock, lock_holder
from shards.rebalance.observer import Observer
from shards.rebalance.options import RunOptions
from shards.rebalance.parallel import ParallelMoves
from shards.rebalance.planner import Plan

State = Rebalance.State
# The phases in which a crashed job holds its device's writers: resumed first.
HOLDING_WRITERS = (
    MoveJob.Phase.FENCED,
    MoveJob.Phase.VERIFIED,
    MoveJob.Phase.ACTIVATED,
    MoveJob.Phase.SWITCHED,
)


class RebalanceError(Exception):
    """A request about runs that cannot be done; the message says why."""


def check_kind(kind: str) -> str:
    """Refuse a kind the Rebalance row cannot hold (drain:<a long alias>) before any change."""
    limit = Rebalance._meta.get_field("kind").max_length or 0
    if len(kind) > limit:
        raise RebalanceError(
            f"cannot record a run of kind {kind!r}: Rebalance.kind holds {limit} characters"
        )
    return kind


def create_run(
    lock: RunnerLock,
    *,
    kind: str,
    cost: str,
    plan: Plan,
    options: RunOptions | None = None,
    queued: bool = False,
) -> Rebalance:
    """Record a run and claim it in one step, so it never looks interrupted to others.

    A `queued` run is left for a Celery worker (or a `--resume`) to claim.
    """
    check_kind(kind)
    with transaction.atomic(using=DIRECTORY_ALIAS):
        run = Rebalance.objects.create(
            kind=kind,
            cost=cost,
            state=State.QUEUED if queued else State.RUNNING,
            plan=plan_entries(plan),
            loads_before=plan.loads_before,
            options=(options or RunOptions()).as_json(),
        )
        if not queued:
            lock.claim(run)
    return run


def _state_of(run: Rebalance) -> str | None:
    return Rebalance.objects.filter(pk=run.pk).values_list("state", flat=True).first()


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
    """Make the run's pending moves with its options; the caller holds `exclusive_runner()`."""
    observer = observer or Observer()
    lock.claim(run)
    pending = sum(1 for entry in run.plan if entry["status"] == PENDING)
    observer.run_started(run, pending)
    try:
        ParallelMoves(run, RunOptions.from_json(run.options), observer).make_moves()
        _finish(run)
    except Exception as exc:
        # Not a failed move (those are recorded and passed over): the directory or
        # a shard failed under the runner, so the run stops here (its moves in flight
        # have ended; a resume settles them).
        Rebalance.objects.filter(pk=run.pk).update(
            state=State.FAILED, error=f"stopped by an error: {exc}", finished_at=timezone.now()
        )
        run.refresh_from_db()
        raise
    finally:
        lock.release(run)
    observer.run_finished(run)
    return run


def with_options(run: Rebalance, **changes: object) -> Rebalance:
    """Change some of a run's options (None keeps one), e.g. for a resume; checked first."""
    options = RunOptions.from_json(run.options).overridden(**changes)
    if options.as_json() != run.options:
        run.options = options.as_json()
        run.save(update_fields=["options"])
    return run


def interrupted_runs() -> list[Rebalance]:
    """Runs left running (or stopping) that no process holds: their runner died."""
    runs = Rebalance.objects.filter(state__in=ACTIVE_STATES).order_by("id")
    return [run for run in runs if lock_holder(run.pk) is None]


def queued_runs() -> list[Rebalance]:
    """Runs queued for a Celery worker that no process has started yet."""
    runs = Rebalance.objects.filter(state=State.QUEUED).order_by("id")
    return [run for run in runs if lock_holder(run.pk) is None]


def refuse_interrupted(*, except_kind: str = "") -> list[Rebalance]:
    """Refuse to start anew over an interrupted or queued run; returns those of `except_kind`."""
    queued = queued_runs()
    if queued:
        run = queued[0]
        raise RebalanceBusy(
            f"{run.kind} {run.pk} is queued for a Celery worker (since"
            f" {timezone.localtime(run.created_at):%H:%M:%S}): wait for it,"
            f" `rebalance --resume` runs it here, `rebalance --stop {run.pk}` cancels it"
        )
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
    """Run every move job no process is running to its end (or roll it back).

    Jobs that hold their device's writers (fenced up to switched) go first: a
    runner killed with several moves in flight may have left more than one.
    """
    observer = observer or Observer()
    jobs = sorted(interrupted_moves(), key=lambda job: (job.phase not in HOLDING_WRITERS, job.pk))
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


def start_queued(run: Rebalance, lock: RunnerLock, observer: Observer | None = None) -> Rebalance:
    """Run a queued run here, unless someone started or stopped it first."""
    lock.claim(run)
    started = Rebalance.objects.filter(pk=run.pk, state=State.QUEUED).update(state=State.RUNNING)
    run.refresh_from_db()
    if not started:
        lock.release(run)
        return run
    return execute(run, lock, observer)


def request_stop(run_id: int | None = None) -> tuple[Rebalance, str]:
    """Ask a running run to stop once its moves in flight end; an interrupted or queued one
    stops now."""
    if run_id is None:
        live = (*ACTIVE_STATES, State.QUEUED)
        run = Rebalance.objects.filter(state__in=live).order_by("-id").first()
        if run is None:
            raise RebalanceError("no rebalance or drain is running")
    else:
        run = Rebalance.objects.filter(pk=run_id).first()
        if run is None:
            raise RebalanceError(f"there is no rebalance run {run_id}")
    if run.state not in (*ACTIVE_STATES, State.QUEUED):
        raise RebalanceError(f"{run.kind} {run.pk} is {run.state}: there is nothing to stop")
    holder = lock_holder(run.pk)
    if holder:
        Rebalance.objects.filter(pk=run.pk, state=State.RUNNING).update(state=State.STOPPING)
        run.refresh_from_db()
        in_flight = run.moves.filter(phase__in=MoveJob.IN_FLIGHT).count()
        return run, (
            f"asked {run.kind} {run.pk} ({holder}) to stop: it starts no new move and stops"
            f" once the {in_flight} move(s) in flight have ended"
        )
    if run.state == State.QUEUED:
        Rebalance.objects.filter(pk=run.pk, state=State.QUEUED).update(
            state=State.STOPPED, error="stopped before it started", finished_at=timezone.now()
        )
        run.refresh_from_db()
        return run, f"{run.kind} {run.pk} was queued, not started; marked stopped"
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
