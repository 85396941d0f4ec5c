"""Making a run's pending moves, several at once, within its limits and its throttle.

The caller's thread coordinates: it picks what may start (shards.rebalance.slots
and .throttle), records every outcome and every hold in the run's row, and
watches for a stop. Each move runs in a thread of a pool of `parallel`, with
connections of its own (the mover's raw shard connections; Django's are per
thread). Only the coordinator writes the plan, so moves that end together never
overwrite each other's outcome. A stop (state 'stopping', from any process)
starts nothing new and lets the moves in flight finish; so does an error that
is not a failed move (the directory or a shard failing under the runner), which
is raised once they have.
"""

import logging
import statistics
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from django.db import connections
from django.utils import timezone

from core.models import Rebalance
from shards.moves.protocol import PhaseCallback
from shards.moves.report import rows_moved
from shards.rebalance.entries import MOVED, PENDING, Entry, make_move
from shards.rebalance.observer import Observer
from shards.rebalance.options import RunOptions
from shards.rebalance.slots import Slots
from shards.rebalance.throttle import Throttle

logger = logging.getLogger(__name__)

State = Rebalance.State
# How often the coordinator looks for finished moves, a stop and a change of the throttle.
POLL_SECONDS = 0.2


@dataclass
class _Running:
    index: int  # in run.plan
    charged: float  # rows the pacer was charged at the start


def _move_in_thread(
    run: Rebalance, entry: Entry, on_phase: PhaseCallback | None
) -> tuple[Entry, int]:
    """One move in a pool thread: its outcome (a copy of the entry) and the rows it copied."""
    try:
        job = make_move(run, entry, on_phase)
        return entry, rows_moved(job) if job is not None and entry["status"] == MOVED else 0
    finally:
        connections.close_all()  # this thread's directory connection


class ParallelMoves:
    def __init__(self, run: Rebalance, options: RunOptions, observer: Observer) -> None:
        self.run = run
        self.options = options
        self.observer = observer
        self.pending = [i for i, entry in enumerate(run.plan) if entry["status"] == PENDING]
        self.running: dict[Future, _Running] = {}
        self.slots = Slots(options)
        self.throttle = Throttle(options)
        self.rows_per_move: list[int] = []
        self.held, self.held_since, self.held_seconds = "", None, run.held_seconds
        self.stopping = False
        self.error: Exception | None = None

    def make_moves(self) -> None:
        """Until every pending move is made, or a stop or an error; then the caller closes."""
        self._record_hold("", force=bool(self.run.held))  # a hold left by a dead runner is over
        with ThreadPoolExecutor(
            max_workers=self.options.parallel, thread_name_prefix=f"{self.run.kind}-{self.run.pk}"
        ) as pool:
            try:
                self._loop(pool)
            except BaseException:
                self._finish_in_flight()
                raise
            self._finish_in_flight()
        if self.error is not None:
            raise self.error

    def _loop(self, pool: ThreadPoolExecutor) -> None:
        while True:
            self._collect()
            if not self.stopping:
                self.stopping = self.error is not None or _stop_asked(self.run)
            if not self.stopping:
                self._start_moves(pool)
            if not self.running and (self.stopping or not self.pending):
                return
            if self.running:
                wait(list(self.running), timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
            else:  # everything left is held by the throttle
                time.sleep(POLL_SECONDS)

    def _finish_in_flight(self) -> None:
        """Let the moves in flight end and record them, whatever ended the loop."""
        self.stopping = True
        wait(list(self.running))
        try:
            self._collect()
            self._record_hold("")
        except Exception:
            logger.exception("%s %s: recording the last moves failed", self.run.kind, self.run.pk)

    def _start_moves(self, pool: ThreadPoolExecutor) -> None:
        plan = self.run.plan
        while self.slots.free and self.pending:
            # In plan order, those whose device and shards have room now (lazily: a long
            # plan is not scanned further than the first that may start).
            candidates = (plan[i] for i in self.pending if self.slots.fits(plan[i]))
            entry, reason = self.throttle.choose(candidates)
            self._record_hold(reason)
            if entry is None:  # held by the throttle, or every one waits for room
                return
            index = next(i for i in self.pending if plan[i] is entry)
            self.pending.remove(index)
            self.slots.take(entry)
            charged = self._expected_rows(entry)
            self.throttle.pacer.charge(charged)
            on_phase = self.observer.move_started(entry)
            future = pool.submit(_move_in_thread, self.run, dict(entry), on_phase)
            self.running[future] = _Running(index, charged)

    def _collect(self) -> None:
        """Write the outcome of every move that ended into the plan, in one save."""
        done = [future for future in self.running if future.done()]
        for future in done:
            running = self.running.pop(future)
            entry = self.run.plan[running.index]
            self.slots.release(entry)
            try:
                outcome, rows = future.result()
            except Exception as exc:
                # Not a failed move (those are outcomes): the entry stays pending, a resume
                # settles it from its job.
                logger.warning("%s %s: %s", self.run.kind, self.run.pk, exc)
                self.error = self.error or exc
                continue
            entry.update(outcome)
            if entry["status"] == MOVED:
                self.rows_per_move.append(rows)
            self.throttle.pacer.correct(running.charged, rows)
            self.observer.move_finished(entry)
        if done:
            self.run.save(update_fields=["plan"])

    def _expected_rows(self, entry: Entry) -> float:
        """Rows a move will copy: its cost by rows, else the mean of the moves made so far."""
        if self.run.cost == Rebalance.Cost.ROWS:
            return float(entry["cost"])
        return statistics.fmean(self.rows_per_move) if self.rows_per_move else 0.0

    def _record_hold(self, reason: str, *, force: bool = False) -> None:
        """Show in the run's row why no move starts now (or that moves may start again)."""
        if reason == self.held and not force:
            return
        now = timezone.now()
        if reason and not self.held:
            self.held_since = now
        elif not reason and self.held_since is not None:
            self.held_seconds += (now - self.held_since).total_seconds()
            self.held_since = None
        self.held = reason
        Rebalance.objects.filter(pk=self.run.pk).update(
            held=reason, held_since=self.held_since, held_seconds=round(self.held_seconds, 3)
        )
        self.observer.run_held(self.run, reason)


def _stop_asked(run: Rebalance) -> bool:
    state = Rebalance.objects.filter(pk=run.pk).values_list("state", flat=True).first()
    return state in (State.STOPPING, State.STOPPED)
