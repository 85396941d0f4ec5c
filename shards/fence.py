"""The per-device fence: how writes stay correct while a device moves between shards.

Every write for a device runs inside a transaction on the device's shard that
first takes the device's fence row FOR SHARE and checks that the shard serves the
device ('active', or 'copying' while a move copies it). A mover sets the row to
'fenced' (its UPDATE waits for in-flight writers to commit); writers that meet
'fenced' wait and try again until the mover sets it to 'moved' (or back to
'active' on a rollback). A writer that meets 'moved', or a stale cached
placement, drops the placement and retries on the shard the directory names.
Writers stall for the fenced window only; they do not fail.

This module owns the fence table: every query on it and every transition of it
(the writers', the mover's, the cleanup's, the analysis', the statistics') is
written here, with the state sets DeviceFence names.
"""

import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg2.errors
from django.conf import settings
from django.db import OperationalError, connections, transaction
from django.db.models import QuerySet

from routers.errors import UnknownShard
from routers.placement import device_id_of, invalidate_placement, shard_for_device
from shards.models import DeviceFence
from shards.sql import literal_list

T = TypeVar("T")

State = DeviceFence.State
FENCE_TABLE = DeviceFence._meta.db_table
# Each retry re-reads the placement; two moves in a row are the most a writer meets.
WRITE_ATTEMPTS = 4
# A writer that meets a fenced device no mover's gate holds (the mover died) polls with
# this back-off, in seconds.
FENCE_POLL_FIRST = 0.005
FENCE_POLL_MAX = 0.05


class DeviceMoved(Exception):
    """The shard tried no longer owns the device; resolve the placement again."""

    def __init__(self, device_id: int, alias: str, state: str | None) -> None:
        self.device_id = device_id
        self.alias = alias
        self.state = state
        super().__init__(f"device {device_id} is not active on {alias} (fence: {state})")


def lock_fence(device_id: int, alias: str, *, deleting: bool = False) -> None:
    """Inside a transaction on `alias`: hold the fence row FOR SHARE or raise DeviceMoved.

    Raw SQL because Django's select_for_update() has no FOR SHARE mode, and a
    shared lock is the point: writers of one device do not queue behind each other.
    `deleting`: the caller removes rows, which a move copying the device could
    not see; only a plain 'active' owner allows that.
    """
    with connections[alias].cursor() as cursor:
        cursor.execute(
            f"SELECT state FROM {FENCE_TABLE} WHERE device_id = %s FOR SHARE",
            [device_id],
        )
        row = cursor.fetchone()
    state = row[0] if row else None
    allowed = DeviceFence.DELETABLE if deleting else DeviceFence.SERVING
    if state not in allowed:
        raise DeviceMoved(device_id, alias, state)


def lock_owned_devices(
    alias: str,
    device_ids: list[int] | None = None,
    *,
    deleting: bool = False,
    exclusive: bool = False,
) -> list[int]:
    """Inside a transaction on `alias`: the devices this shard owns, their fences held FOR SHARE.

    For work on many devices at once (analysis, expiry, retention): a device whose
    fence a mover holds is skipped, not waited for (SKIP LOCKED), and is done by a
    later run on whichever shard owns it then. `deleting` takes plain 'active'
    owners only, as lock_fence does. `device_ids` None means every owned device.
    `exclusive` also keeps the devices' writers out until the transaction ends (a
    device with a write in flight is skipped too), for work that must see a
    device's rows hold still between two statements.
    """
    states = list(DeviceFence.DELETABLE if deleting else DeviceFence.SERVING)
    only = "" if device_ids is None else "AND device_id = ANY(%s)"
    params: list = [states] if device_ids is None else [states, device_ids]
    mode = "FOR NO KEY UPDATE" if exclusive else "FOR SHARE"
    with connections[alias].cursor() as cursor:
        cursor.execute(
            f"SELECT device_id FROM {FENCE_TABLE}"
            f" WHERE state = ANY(%s) {only} ORDER BY device_id {mode} SKIP LOCKED",
            params,
        )
        return [row[0] for row in cursor.fetchall()]


def follow_device(
    device: object,
    attempt: Callable[[str], T],
    *,
    waits_for: tuple = (State.FENCED,),
    first_alias: str | None = None,
) -> T:
    """Run `attempt(alias)` on the device's shard until it succeeds, following moves.

    `attempt` raises DeviceMoved when the shard does not serve the device. A fence in
    one of `waits_for` is waited for (up to FENCE_WAIT_SECONDS, then DeviceMoved,
    which callers answer with 503 and Retry-After): at the mover's gate while it holds
    one, else by polling; any other answer drops the
    cached placement and asks again, at most WRITE_ATTEMPTS times. `first_alias`: the
    shard the caller resolved already, for the first try.
    """
    device_id = device_id_of(device)
    deadline = time.monotonic() + settings.FENCE_WAIT_SECONDS
    pause = FENCE_POLL_FIRST
    relookups = 0
    alias = first_alias
    while True:
        try:
            if alias is None:
                alias = shard_for_device(device_id)
            return attempt(alias)
        except DeviceMoved as exc:
            if exc.state in waits_for:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                if exc.state == State.FENCED and wait_at_gate(exc.alias, device_id, remaining):
                    continue  # the mover let go (or the wait ran out): read the fence again
                if pause > remaining:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, FENCE_POLL_MAX)
                continue
            relookups += 1
            invalidate_placement(device_id)
            alias = None
            if relookups >= WRITE_ATTEMPTS:
                raise
        except UnknownShard:
            # A cached placement naming a shard retired since: ask the directory.
            relookups += 1
            invalidate_placement(device_id)
            alias = None
            if relookups >= WRITE_ATTEMPTS:
                raise


# -- the mover's gate -----------------------------------------------------------------------
# Through its fenced window a mover also holds, in a transaction of its own on the source,
# an exclusive advisory lock keyed by the device id (on shards the single-bigint advisory
# key space is this gate's alone). A writer or reader that meets 'fenced' queues for the
# same lock, shared, instead of polling, so it tries again the moment the mover lets go.
# A mover that dies drops its connection and the gate with it: the fence stays 'fenced'
# and waiters fall back to polling until a resume or rollback. Transaction-scoped locks on
# both sides, so a transaction-pooling PgBouncer in front of the shard keeps them apart.


def close_gate(cursor: Any, device_id: int) -> None:
    """On the mover's gate connection, in a transaction it keeps open through the fenced
    window: from now on waiters queue here. Commit (or close) the connection to let them go."""
    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [device_id])


def wait_at_gate(alias: str, device_id: int, seconds: float) -> bool:
    """Wait up to `seconds` for the mover holding the device's gate on `alias` to let go.

    False at once when no mover holds it (the caller polls instead) or when the caller is
    inside a transaction on `alias` (queueing would hold that transaction's snapshot open).
    """
    connection = connections[alias]
    if connection.in_atomic_block:
        return False
    try:
        with transaction.atomic(using=alias), connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_xact_lock_shared(%s)", [device_id])
            if cursor.fetchone()[0]:
                return False
            timeout_ms = max(1, int(seconds * 1000))
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{timeout_ms}ms"])
            cursor.execute("SELECT pg_advisory_xact_lock_shared(%s)", [device_id])
    except OperationalError as exc:
        if not isinstance(exc.__cause__, psycopg2.errors.LockNotAvailable):
            raise
    return True


def write_for_device(device: object, write: Callable[[str], T], *, deleting: bool = False) -> T:
    """Run `write(alias)` in a fenced transaction on the device's shard, following moves.

    A fenced device is waited for (a deleting writer also waits while a move copies
    it); a moved one is looked up again (follow_device).
    """
    device_id = device_id_of(device)

    def attempt(alias: str) -> T:
        with transaction.atomic(using=alias):
            lock_fence(device_id, alias, deleting=deleting)
            return write(alias)

    waits_for = (State.FENCED, State.COPYING) if deleting else (State.FENCED,)
    return follow_device(device_id, attempt, waits_for=waits_for)


# -- readers ---------------------------------------------------------------------------------
# A read is served only by a shard whose fence says, in the read's own snapshot, that it
# serves the device: a process whose cached placement is stale after a move is sent on
# to the new owner, and a read during the fenced window waits as a writer does. So a
# write that completed before a read began is always visible to it.


def served_device_sql(device: str) -> str:
    """SQL that is true when this shard serves the device in `device` (a column, or %s)
    right now: not one a mover holds fenced, not one moved away. One index probe."""
    return (
        f"EXISTS (SELECT 1 FROM {FENCE_TABLE} served WHERE served.device_id = {device}"
        f" AND served.state IN ({literal_list(DeviceFence.SERVING)}))"
    )


SERVED_SQL = served_device_sql("%s")


def served(state: str | None) -> bool:
    return state in DeviceFence.SERVING


def fence_state_with(alias: str, device_id: int, inner: str, params: list) -> tuple[Any, ...]:
    """(fence state, the columns of `inner`) read in ONE statement, so in one snapshot.

    `inner` is a query that returns one row (an EXISTS, a count, an aggregate); a device
    without a fence row here gives (None,).
    """
    with connections[alias].cursor() as cursor:
        cursor.execute(
            f"SELECT f.state, inner_answer.* FROM {FENCE_TABLE} f,"
            f" LATERAL ({inner}) inner_answer WHERE f.device_id = %s",
            [*params, device_id],
        )
        row = cursor.fetchone()
    return tuple(row) if row else (None,)


def read_for_device(device: object, read: Callable[[str], T]) -> T:
    """Run `read(alias)` on the shard that serves the device, in one snapshot with the
    fence's word on it: a REPEATABLE READ, READ ONLY transaction.

    For reads that are not one queryset (the series, several raw statements). Follows
    moves and waits out a fenced window as writers do (follow_device).
    """
    device_id = device_id_of(device)

    def attempt(alias: str) -> T:
        connection = connections[alias]
        nested = connection.in_atomic_block
        with transaction.atomic(using=alias):
            with connection.cursor() as cursor:
                if not nested:  # the transaction's first statement sets its snapshot's kind
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                state = fence_state(cursor, device_id)
            if not served(state):
                raise DeviceMoved(device_id, alias, state)
            return read(alias)

    return follow_device(device_id, attempt)


def open_fence(device_id: int, alias: str, *, epoch: int = 1) -> None:
    """Make `alias` the device's owner on the shard side (idempotent)."""
    DeviceFence.objects.on_shard(alias).update_or_create(
        device_id=device_id,
        defaults={"state": State.ACTIVE, "epoch": epoch},
    )


# -- the shard's devices, for statistics, costs, drains and sweeps -------------------------

# The devices this shard holds as their owner (a move's fence included; a moved device's
# leftovers awaiting cleanup not), as a subquery other statements embed.
HELD_DEVICES_SQL = (
    f"SELECT device_id FROM {FENCE_TABLE} WHERE state IN ({literal_list(DeviceFence.HELD)})"
)


def held_device_ids(cursor: Any) -> list[int]:
    cursor.execute(HELD_DEVICES_SQL)
    return [row[0] for row in cursor.fetchall()]


def count_held_devices(cursor: Any) -> int:
    cursor.execute(f"SELECT count(*) FROM ({HELD_DEVICES_SQL}) held")
    return cursor.fetchone()[0]


def held_devices(alias: str) -> QuerySet:
    """The ids of the devices the shard holds (as HELD_DEVICES_SQL), as an ORM subquery."""
    return (
        DeviceFence.objects.on_shard(alias)
        .filter(state__in=DeviceFence.HELD)
        .values_list("device_id", flat=True)
    )


def knows_any_device(alias: str) -> bool:
    """Whether the shard has a fence row for any device (held, moved away or pending)."""
    return DeviceFence.objects.on_shard(alias).exists()


def has_no_fence_sql(device_column: str) -> str:
    """SQL that is true when the device in `device_column` has no fence row here at all."""
    return f"NOT EXISTS (SELECT 1 FROM {FENCE_TABLE} f WHERE f.device_id = {device_column})"


# -- transitions: the mover, the cleanup and a device's deletion -----------------------------
# Each takes a cursor in the caller's transaction (a raw psycopg2 connection for movers).


def fence_state(cursor: Any, device_id: int, *, lock: bool = False) -> str | None:
    """The device's fence state here (None: no row); `lock` holds the row FOR UPDATE."""
    cursor.execute(
        f"SELECT state FROM {FENCE_TABLE} WHERE device_id = %s" + (" FOR UPDATE" if lock else ""),
        [device_id],
    )
    row = cursor.fetchone()
    return row[0] if row else None


def fence_state_and_since(cursor: Any, device_id: int) -> tuple[str | None, Any]:
    """(state, when it last changed), or (None, None) without a row."""
    cursor.execute(f"SELECT state, updated_at FROM {FENCE_TABLE} WHERE device_id = %s", [device_id])
    return cursor.fetchone() or (None, None)


def set_fence(cursor: Any, device_id: int, new_state: str, from_states: tuple, **extra: Any) -> int:
    """Move the fence row to `new_state` if it is in one of `from_states`; rows changed.

    The UPDATE waits for writers holding the row FOR SHARE, so after it commits no
    write that began under the old state is still running.
    """
    assignments = ", ".join(
        ["state = %(state)s", "updated_at = now()"]
        + [f"{column} = %({column})s" for column in extra]
    )
    cursor.execute(
        f"UPDATE {FENCE_TABLE} SET {assignments}"
        " WHERE device_id = %(device_id)s AND state = ANY(%(from_states)s)",
        {"state": new_state, "device_id": device_id, "from_states": list(from_states), **extra},
    )
    return cursor.rowcount


def open_pending(cursor: Any, device_id: int, epoch: int) -> None:
    """A move's target: the fence row 'pending' (copies arrive; nothing is served yet)."""
    cursor.execute(
        f"INSERT INTO {FENCE_TABLE} (device_id, state, epoch, updated_at)"
        " VALUES (%s, %s, %s, now()) ON CONFLICT (device_id) DO UPDATE"
        " SET state = excluded.state, epoch = excluded.epoch, updated_at = now()",
        [device_id, State.PENDING, epoch],
    )


def remove_fence(cursor: Any, device_id: int, states: tuple | None = None) -> int:
    """Delete the fence row (only in one of `states`, when given); rows deleted."""
    if states is None:
        cursor.execute(f"DELETE FROM {FENCE_TABLE} WHERE device_id = %s", [device_id])
    else:
        cursor.execute(
            f"DELETE FROM {FENCE_TABLE} WHERE device_id = %s AND state = ANY(%s)",
            [device_id, list(states)],
        )
    return cursor.rowcount
