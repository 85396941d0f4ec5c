"""What a command hears about a run (progress bars); the default hears nothing.

Every method is called from the run's coordinating thread, except the phase
callback that `move_started` returns: the mover calls that from the move's own
thread, while other moves run.
"""

from typing import Any

from core.models import MoveJob, Rebalance
from shards.moves.protocol import PhaseCallback

Entry = dict[str, Any]


class Observer:
    def run_started(self, run: Rebalance, pending: int) -> None:
        pass

    def move_started(self, entry: Entry) -> PhaseCallback | None:
        return None

    def move_finished(self, entry: Entry) -> None:
        pass

    def run_held(self, run: Rebalance, reason: str) -> None:
        """The throttle holds new moves (`reason`), or lets them start again (empty)."""

    def job_resuming(self, job: MoveJob) -> PhaseCallback | None:
        return None

    def job_resumed(self, job: MoveJob, error: str) -> None:
        pass

    def run_finished(self, run: Rebalance) -> None:
        pass
