"""Advisory locks that say "this work is running", safe behind a transaction pooler.

Every process reaches PostgreSQL through PgBouncer in transaction mode, which hands
each transaction to whichever server connection is free: a session lock
(pg_advisory_lock) would stay behind on a server connection that other clients then
use, and its unlock could land on another. So a lock held for the length of some work
(a move, a rebalance run, a shard's analysis) is a transaction-level lock taken in a
transaction kept open on a connection of its own. The pooler keeps that transaction on
one server connection until it ends; PostgreSQL drops the lock when it ends or when
the holder dies (its connection closes, and the pooler closes the server connection
of a client that leaves mid-transaction). Each held lock costs one server connection
of the pool for as long as it is held.

Whether someone holds a lock is read from pg_locks, which every session sees.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
from django.db import connections

from routers.registry import own_connection_params

# Two-key advisory locks appear in pg_locks with objsubid 2: (classid, objid) = the keys.
_HOLDER_SQL = """
    SELECT coalesce(nullif(a.application_name, ''), 'backend ' || l.pid::text)
    FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = %s::int::oid AND l.objid = %s::int::oid
"""


class HeldLock:
    """The advisory lock (namespace, key) on `alias`, held from acquire() to release()."""

    def __init__(self, alias: str, namespace: int, key: int, *, holder: str = "") -> None:
        self.alias = alias
        self.namespace = namespace
        self.key = key
        self.holder = holder
        self._connection: Any = None

    def acquire(self) -> bool:
        """Take the lock if free; False if another holder has it."""
        params = own_connection_params(self.alias)
        if self.holder:
            params["application_name"] = self.holder
        connection = psycopg2.connect(**params)
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_try_advisory_xact_lock(%s, %s)", [self.namespace, self.key]
                )
                acquired = bool(cursor.fetchone()[0])
        except BaseException:
            connection.close()
            raise
        if not acquired:
            connection.close()
            return False
        # The transaction stays open: the lock lives as long as it does.
        self._connection = connection
        return True

    def release(self) -> None:
        """End the holding transaction (and with it the lock); safe to call twice."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


@contextmanager
def holding(alias: str, namespace: int, key: int, *, holder: str = "") -> Iterator[bool]:
    """Hold the lock for the block; yields False (holding nothing) if another has it."""
    lock = HeldLock(alias, namespace, key, holder=holder)
    acquired = lock.acquire()
    try:
        yield acquired
    finally:
        lock.release()


def lock_holder(alias: str, namespace: int, key: int) -> str | None:
    """Who holds (namespace, key) on `alias`: its application name, or None if nobody."""
    with connections[alias].cursor() as cursor:
        cursor.execute(_HOLDER_SQL, [namespace, key])
        row = cursor.fetchone()
    return row[0] if row else None
