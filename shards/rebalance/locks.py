"""Advisory locks on the directory that say which process runs a rebalance or a drain.

Two keys in one namespace, held by the runner for as long as it works: (namespace, 0)
while any rebalance or drain runs, so two never run at once; (namespace, run id) while
that run is worked on, so a run left in state 'running' whose key nobody holds is known
to be interrupted (PostgreSQL drops a dead holder's locks). Each is held by a
transaction of its own on a connection of the runner's own (shards.advisory), so
nothing in the process can end it by accident, and the pooler cannot split it.
"""

import os
import socket
from collections.abc import Iterator
from contextlib import closing, contextmanager

from core.models import Rebalance
from routers.aliases import DIRECTORY_ALIAS
from shards.advisory import HeldLock
from shards.advisory import lock_holder as advisory_holder
from shards.moves.protocol import MOVE_LOCK_NAMESPACE

# Next to the move jobs' namespace, never the same: a run id and a job id may be equal.
RUN_LOCK_NAMESPACE = MOVE_LOCK_NAMESPACE + 1
ANY_RUN = 0
ACTIVE_STATES = (Rebalance.State.RUNNING, Rebalance.State.STOPPING)


class RebalanceBusy(Exception):
    """Another rebalance or drain is running, or one was interrupted; the message says which."""


def lock_holder(key: int) -> str | None:
    """Who holds (namespace, key): the holder's application name, or None if nobody."""
    return advisory_holder(DIRECTORY_ALIAS, RUN_LOCK_NAMESPACE, key)


def running_elsewhere_message() -> str:
    """What is running now, for refusing a second runner."""
    for run in Rebalance.objects.filter(state__in=ACTIVE_STATES).order_by("id"):
        holder = lock_holder(run.pk)
        if holder:
            return (
                f"{run.kind} {run.pk} is running ({holder}); `rebalance --status` shows its"
                f" progress, `rebalance --stop {run.pk}` asks it to stop after its current move"
            )
    holder = lock_holder(ANY_RUN) or "another process"
    return f"another rebalance or drain is being planned or run ({holder}); try again shortly"


class RunnerLock:
    """The runner's advisory locks, each held until released or closed."""

    def __init__(self) -> None:
        self.holder = f"fleet-rebalance pid {os.getpid()} on {socket.gethostname()}"
        self.held: dict[int, HeldLock] = {}

    def try_lock(self, key: int) -> bool:
        if key in self.held:
            return True
        lock = HeldLock(DIRECTORY_ALIAS, RUN_LOCK_NAMESPACE, key, holder=self.holder)
        if not lock.acquire():
            return False
        self.held[key] = lock
        return True

    def unlock(self, key: int) -> None:
        lock = self.held.pop(key, None)
        if lock is not None:
            lock.release()

    def claim(self, run: Rebalance) -> None:
        """Hold the run's own key: from now on the run is not 'interrupted'."""
        if not self.try_lock(run.pk):
            raise RebalanceBusy(f"{run.kind} {run.pk} is being run by {lock_holder(run.pk)}")

    def release(self, run: Rebalance) -> None:
        self.unlock(run.pk)

    def close(self) -> None:
        for key in list(self.held):
            self.unlock(key)


@contextmanager
def exclusive_runner() -> Iterator[RunnerLock]:
    """The right to run a rebalance or drain; refused while another process has it."""
    with closing(RunnerLock()) as lock:
        if not lock.try_lock(ANY_RUN):
            raise RebalanceBusy(running_elsewhere_message())
        yield lock
