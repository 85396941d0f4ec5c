"""Progress bars for a run on stderr: one over the moves, and each move's phases below it."""

import sys

from tqdm import tqdm

from core.models import MoveJob, Rebalance
from shards.moves.protocol import PhaseCallback
from shards.moves.report import PhaseBar, describe_job
from shards.rebalance.runner import FAILED, SKIPPED, Entry, Observer


def _name(entry: Entry) -> str:
    return entry.get("serial") or str(entry["device"])


class MovesProgress(Observer):
    """Shows a run to a person; silent (and tqdm-free) when disabled, as for --json."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: tqdm | None = None
        self.phases: PhaseBar | None = None

    def run_started(self, run: Rebalance, pending: int) -> None:
        self.bar = tqdm(
            total=pending, desc=f"{run.kind} {run.pk}", unit="move", disable=not self.enabled
        )

    def move_started(self, entry: Entry) -> PhaseCallback | None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"{_name(entry)} {entry['source']} -> {entry['target']}")
        self.phases = PhaseBar(f"  {_name(entry)} -> {entry['target']}", enabled=self.enabled)
        return self.phases

    def move_finished(self, entry: Entry) -> None:
        if self.phases is not None:
            self.phases.close()
            self.phases = None
        if self.bar is not None:
            self.bar.update(1)
        if self.enabled and entry["status"] in (FAILED, SKIPPED):
            tqdm.write(f"{_name(entry)} {entry['status']}: {entry['error']}", file=sys.stderr)

    def job_resuming(self, job: MoveJob) -> PhaseCallback | None:
        self.phases = PhaseBar(f"resume move {job.pk}", enabled=self.enabled)
        return self.phases

    def job_resumed(self, job: MoveJob, error: str) -> None:
        if self.phases is not None:
            self.phases.close()
            self.phases = None
        if self.enabled:
            line = describe_job(job) if not error else f"move {job.pk}: {error}"
            tqdm.write(line, file=sys.stderr)

    def run_finished(self, run: Rebalance) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
