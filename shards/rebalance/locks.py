"""Advisory locks on the directory that say which process runs a rebalance or a drain.

Two keys in one namespace, held on a directory connection of the runner's own
for as long as it works: (namespace, 0) while any rebalance or drain runs, so
two never run at once; (namespace, run id) while that run is worked on, so a
run left in state 'running' whose key nobody holds is known to be interrupted
(PostgreSQL drops a dead session's locks). A connection of its own, not
Django's, so nothing in the process can close it (and its locks) by accident.
"""

import os
import socket
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Any

import psycopg2
from django.db import connections

from core.models import Rebalance
from routers.aliases import DIRECTORY_ALIAS
from shards.moves.protocol import MOVE_LOCK_NAMESPACE

# Next to the move jobs' namespace, never the same: a run id and a job id may be equal.
RUN_LOCK_NAMESPACE = MOVE_LOCK_NAMESPACE + 1
ANY_RUN = 0
ACTIVE_STATES = (Rebalance.State.RUNNING, Rebalance.State.STOPPING)

_HOLDER_SQL = """
    SELECT coalesce(nullif(a.application_name, ''), 'backend ' || l.pid::text)
    FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
      AND l.classid = %s::int::oid AND l.objid = %s::int::oid
"""


class RebalanceBusy(Exception):
    """Another rebalance or drain is running, or one was interrupted; the message says which."""


def lock_holder(key: int) -> str | None:
    """Who holds (namespace, key): the holder's application name, or None if nobody."""
    with connections[DIRECTORY_ALIAS].cursor() as cursor:
        cursor.execute(_HOLDER_SQL, [RUN_LOCK_NAMESPACE, key])
        row = cursor.fetchone()
    return row[0] if row else None


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
    """The runner's own directory session, holding its advisory locks until closed."""

    def __init__(self) -> None:
        params: dict[str, Any] = connections[DIRECTORY_ALIAS].get_connection_params()
        params.pop("cursor_factory", None)
        params["application_name"] = f"fleet-rebalance pid {os.getpid()} on {socket.gethostname()}"
        self.connection = psycopg2.connect(**params)
        self.connection.autocommit = True
        self.claimed: set[int] = set()

    def try_lock(self, key: int) -> bool:
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [RUN_LOCK_NAMESPACE, key])
            return bool(cursor.fetchone()[0])

    def unlock(self, key: int) -> None:
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [RUN_LOCK_NAMESPACE, key])

    def claim(self, run: Rebalance) -> None:
        """Hold the run's own key: from now on the run is not 'interrupted'."""
        if run.pk in self.claimed:
            return
        if not self.try_lock(run.pk):
            raise RebalanceBusy(f"{run.kind} {run.pk} is being run by {lock_holder(run.pk)}")
        self.claimed.add(run.pk)

    def release(self, run: Rebalance) -> None:
        if run.pk in self.claimed:
            self.unlock(run.pk)
            self.claimed.discard(run.pk)

    def close(self) -> None:
        self.connection.close()


@contextmanager
def exclusive_runner() -> Iterator[RunnerLock]:
    """The right to run a rebalance or drain; refused while another process has it."""
    with closing(RunnerLock()) as lock:
        if not lock.try_lock(ANY_RUN):
            raise RebalanceBusy(running_elsewhere_message())
        yield lock
