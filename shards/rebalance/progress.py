"""Progress bars for a run on stderr: one over the moves, and one per move in flight below it.

Moves in flight report their phases from their own threads; tqdm serialises the
drawing, and each move's bar takes the first free line under the run's bar.
"""

import sys
import threading

from tqdm import tqdm

from core.models import MoveJob, Rebalance
from shards.moves.protocol import PhaseCallback
from shards.moves.report import PhaseBar, describe_job
from shards.rebalance.entries import FAILED, SKIPPED, Entry
from shards.rebalance.observer import Observer


def _name(entry: Entry) -> str:
    return entry.get("serial") or str(entry["device"])


class MovesProgress(Observer):
    """Shows a run to a person; silent (and tqdm-free) when disabled, as for --json."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: tqdm | None = None
        self.phases: dict[int, PhaseBar] = {}  # device id -> its move's bar
        self.lock = threading.Lock()

    def run_started(self, run: Rebalance, pending: int) -> None:
        self.bar = tqdm(
            total=pending, desc=f"{run.kind} {run.pk}", unit="move", disable=not self.enabled
        )

    def move_started(self, entry: Entry) -> PhaseCallback | None:
        bar = PhaseBar(
            f"  {_name(entry)} {entry['source']} -> {entry['target']}", enabled=self.enabled
        )
        with self.lock:
            self.phases[entry["device"]] = bar
        return bar

    def move_finished(self, entry: Entry) -> None:
        with self.lock:
            bar = self.phases.pop(entry["device"], None)
        if bar is not None:
            bar.close()
        if self.bar is not None:
            self.bar.update(1)
        if self.enabled and entry["status"] in (FAILED, SKIPPED):
            tqdm.write(f"{_name(entry)} {entry['status']}: {entry['error']}", file=sys.stderr)

    def run_held(self, run: Rebalance, reason: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"held: {reason}" if reason else "", refresh=True)

    def job_resuming(self, job: MoveJob) -> PhaseCallback | None:
        bar = PhaseBar(f"resume move {job.pk}", enabled=self.enabled)
        with self.lock:
            self.phases[job.device_id] = bar
        return bar

    def job_resumed(self, job: MoveJob, error: str) -> None:
        with self.lock:
            bar = self.phases.pop(job.device_id, None)
        if bar is not None:
            bar.close()
        if self.enabled:
            line = describe_job(job) if not error else f"move {job.pk}: {error}"
            tqdm.write(line, file=sys.stderr)

    def run_finished(self, run: Rebalance) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
