"""Which server is a database's primary, and how far behind each standby is.

Asked of the database itself, through the same connection the app uses: clients reach
the current primary (through the pooler and, in a replicated deployment, a proxy that
follows Patroni's leader), and the primary's pg_stat_replication lists its standbys,
whether each streams synchronously, and the WAL it has not yet replayed. A database
without standbys says so. Seeing other sessions' replication rows needs the
pg_monitor role (or a superuser), which the deployments grant the app's login.

Django-free (it takes a DB-API cursor), so `cluster_status`, /readyz, the admin and the
tests read one shape.
"""

from dataclasses import asdict, dataclass, field
from typing import Any

REPLICATION_SQL = """
SELECT pg_is_in_recovery(),
       coalesce(host(inet_server_addr()), 'local') || ':' || coalesce(inet_server_port(), 0),
       CASE WHEN pg_is_in_recovery() THEN '[]'::json ELSE coalesce((
         SELECT json_agg(json_build_object(
                  'name', application_name,
                  'address', host(client_addr),
                  'state', state,
                  'sync_state', sync_state,
                  'lag_bytes', pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn),
                  'replay_lag_seconds', extract(epoch FROM replay_lag))
                ORDER BY application_name)
           FROM pg_stat_replication), '[]'::json) END
"""


@dataclass(frozen=True)
class Standby:
    """One standby as its primary sees it."""

    name: str
    address: str | None
    state: str | None  # streaming, catchup, startup, ... (None: not allowed to see)
    sync_state: str | None  # sync, potential, async, quorum
    lag_bytes: int | None  # WAL written on the primary, not yet replayed here
    replay_lag_seconds: float | None

    def summary(self) -> str:
        lag = "lag ?" if self.lag_bytes is None else f"lag {self.lag_bytes} B"
        if self.replay_lag_seconds is not None:
            lag += f" ({self.replay_lag_seconds:.1f} s)"
        return f"{self.name} {self.state or '?'} {self.sync_state or '?'}, {lag}"


@dataclass(frozen=True)
class Replication:
    """The server a client reached (`server`, host:port) and its standbys."""

    server: str
    in_recovery: bool
    standbys: list[Standby] = field(default_factory=list)

    @property
    def synchronous(self) -> bool:
        """A standby confirms every commit: an acknowledged write survives the primary."""
        return any(s.sync_state == "sync" and s.state == "streaming" for s in self.standbys)

    def summary(self) -> str:
        if self.in_recovery:
            return f"{self.server} is a standby (read-only): clients do not reach the primary"
        if not self.standbys:
            return f"primary {self.server}, no standby"
        return f"primary {self.server}; standby " + "; ".join(s.summary() for s in self.standbys)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "synchronous": self.synchronous}


def read_replication(cursor: Any) -> Replication:
    """The replication state of the server `cursor` is connected to."""
    cursor.execute(REPLICATION_SQL)
    in_recovery, server, standbys = cursor.fetchone()
    rows = standbys if isinstance(standbys, list) else []
    return Replication(
        server=server,
        in_recovery=bool(in_recovery),
        standbys=[
            Standby(
                name=row.get("name") or "?",
                address=row.get("address"),
                state=row.get("state"),
                sync_state=row.get("sync_state"),
                lag_bytes=None if row.get("lag_bytes") is None else int(row["lag_bytes"]),
                replay_lag_seconds=row.get("replay_lag_seconds"),
            )
            for row in rows
        ],
    )
