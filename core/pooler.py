"""What a database's connection pool is doing, read from PgBouncer's admin console.

Every process reaches the directory and the shards through PgBouncer in transaction
mode. Its console (the virtual database `pgbouncer`, open to the `stats_users`) tells
how many clients are served or waiting and how many server connections the pool holds,
which is what an operator sizing the pool needs. A database reached without a pooler
has no console: the figures are then None, shown as "direct".

Django-free, so the local cluster's tool shows the same figures as `cluster_status`
and the admin (shards.stats.pool_figures) without setting Django up.
"""

from contextlib import closing
from dataclasses import asdict, dataclass
from typing import Any

import psycopg2

CONSOLE_DB = "pgbouncer"
CONNECT_TIMEOUT = 2
# Server connections in any state count against the pool (PgBouncer's sv_* columns).
_SERVER_COLUMNS = ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")


@dataclass(frozen=True)
class PoolFigures:
    """One database's pool: clients served and waiting, server connections and the cap."""

    clients_active: int
    clients_waiting: int
    servers: int
    servers_active: int
    pool_size: int
    max_connections: int
    max_wait_seconds: float

    @property
    def cap(self) -> int:
        """The most server connections the pooler opens for the database."""
        return self.max_connections or self.pool_size

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for tables: 'clients 12 (3 waiting), servers 5/20'."""
        waiting = f" ({self.clients_waiting} waiting)" if self.clients_waiting else ""
        return (
            f"clients {self.clients_active + self.clients_waiting}{waiting},"
            f" servers {self.servers}/{self.cap}"
        )


class NoPooler(Exception):
    """The address answers, but not as PgBouncer: the database is reached directly."""


def _rows(cursor: Any, command: str) -> list[dict[str, Any]]:
    cursor.execute(command)
    names = [column.name for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def read_pool(params: dict[str, Any], dbname: str) -> PoolFigures:
    """The pool of `dbname` at the pooler that `params` (psycopg2 keywords) point to.

    Raises NoPooler when the address is a plain PostgreSQL server, and psycopg2's
    errors when nothing answers.
    """
    console = {**params, "dbname": CONSOLE_DB, "connect_timeout": CONNECT_TIMEOUT}
    console.pop("cursor_factory", None)
    console.pop("options", None)
    try:
        connection = psycopg2.connect(**console)
    except psycopg2.OperationalError as exc:
        if f'database "{CONSOLE_DB}" does not exist' in str(exc):
            raise NoPooler(str(exc).strip()) from None
        raise
    with closing(connection):
        # The console knows no transactions: every command must run on its own.
        connection.autocommit = True
        with connection.cursor() as cursor:
            pools = [row for row in _rows(cursor, "SHOW POOLS") if row["database"] == dbname]
            databases = _rows(cursor, "SHOW DATABASES")
    config = next((row for row in databases if row["name"] == dbname), {})
    return PoolFigures(
        clients_active=sum(row["cl_active"] for row in pools),
        clients_waiting=sum(row["cl_waiting"] for row in pools),
        servers=sum(row[column] for row in pools for column in _SERVER_COLUMNS),
        servers_active=sum(row["sv_active"] for row in pools),
        pool_size=int(config.get("pool_size") or 0),
        max_connections=int(config.get("max_connections") or 0),
        max_wait_seconds=max(
            (row["maxwait"] + row.get("maxwait_us", 0) / 1e6 for row in pools), default=0.0
        ),
    )
