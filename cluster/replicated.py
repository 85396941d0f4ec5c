"""A database served by Patroni replicas behind its proxy (FLEET_REPLICAS >= 2).

Speaks like PostgresInstance where `up`, `down` and `status` need it, so the two shapes
share them; adds what only replicas have: the primary, a planned switchover, members.
"""

import http.client
import json
import os
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.dbproxy import DatabaseProxy
from cluster.patroni import START_TIMEOUT, STOP_TIMEOUT, PatroniNode
from cluster.postgres import PostgresInstance
from cluster.util import ClusterError, http_get, pids_with_marker, tail, terminate, wait_for
from core.local_cluster import HOST, node_port, patroni_port

SWITCHOVER_TIMEOUT = 60.0


@dataclass
class ReplicatedDatabase:
    """`replicas` Patroni members of one database and the proxy on its port.

    Speaks like PostgresInstance where `up`, `down` and `status` need it (name, port,
    ensure_running, create_database, is_ready, stop, pid), so the two shapes share them.
    """

    name: str
    port: int
    var: Path
    replicas: int
    etcd_port: int
    port_env: str | None = None
    nodes: list[PatroniNode] = field(init=False)

    def __post_init__(self) -> None:
        if self.replicas < 2:
            raise ClusterError(f"{self.name}: a replicated database needs 2 or more replicas")
        self.nodes = [
            PatroniNode(
                self.name,
                replica,
                node_port(self.port, replica),
                patroni_port(self.port, replica),
                self.var,
                self.etcd_port,
            )
            for replica in range(self.replicas)
        ]

    @property
    def proxy(self) -> DatabaseProxy:
        return DatabaseProxy(self.name, self.port, self.nodes, self.var)

    @property
    def sql(self) -> PostgresInstance:
        """For SQL only: psql through the proxy reaches the primary."""
        return PostgresInstance(self.name, self.port, self.var / "pg", self.var / "log")

    @property
    def log_file(self) -> Path:
        return self.proxy.log_file

    def pid(self) -> int | None:
        """The proxy's pid: what clients connect to."""
        return self.proxy.pid()

    def running_port(self) -> int | None:
        return self.port if self.pid() is not None else None

    def primary(self) -> PatroniNode | None:
        return next((node for node in self.nodes if node.is_primary()), None)

    def is_ready(self) -> bool:
        """The proxy leads to a primary that accepts connections."""
        return self.pid() is not None and self.sql.is_ready()

    def ensure_running(self) -> bool:
        """Start the members (the first bootstraps), then the proxy; wait for a primary."""
        started = [node.start() for node in self.nodes]
        self.proxy.ensure_running()
        deadline = time.monotonic() + START_TIMEOUT
        for node in self.nodes:
            node.wait_running(max(1.0, deadline - time.monotonic()))
        if not wait_for(self.is_ready, timeout=max(1.0, deadline - time.monotonic())):
            raise ClusterError(
                f"{self.name}: no primary answers through {HOST}:{self.port}. Last lines of"
                f" {self.nodes[0].log_file}:\n{tail(self.nodes[0].log_file)}"
            )
        return any(started)

    def create_database(self, dbname: str) -> bool:
        return self.sql.create_database(dbname)

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        return self.sql.psql(sql, dbname=dbname)

    def ports(self) -> set[int]:
        """Every port it takes: the proxy's, each member's PostgreSQL and REST API."""
        return {self.port, *(node.port for node in self.nodes)} | {
            node.rest_port for node in self.nodes
        }

    def stop(self) -> bool:
        """Stop the proxy, the standbys, then the primary (so no failover is attempted)."""
        stopped = self.proxy.stop()
        primary = self.primary()
        for node in sorted(self.nodes, key=lambda node: node is primary):
            stopped = node.stop() or stopped
        return stopped

    def switchover(self, candidate: str | None = None) -> tuple[str, str]:
        """Planned hand-over of the primary role to `candidate` (default: a running
        standby), through the primary's Patroni; waits until the proxy leads to it.

        Returns (old primary, new primary) member names.
        """
        primary = self.primary()
        if primary is None:
            raise ClusterError(f"{self.name}: no primary now; Patroni is failing over already")
        standbys = [node for node in self.nodes if node is not primary and node.is_running()]
        if candidate is not None:
            standbys = [node for node in standbys if node.name == candidate]
        if not standbys:
            wanted = f" named {candidate}" if candidate else ""
            raise ClusterError(f"{self.name}: no running standby{wanted} to switch over to")
        target = standbys[0]
        body = json.dumps({"leader": primary.name, "candidate": target.name}).encode()
        request = urllib.request.Request(f"{primary.rest_url}/switchover", data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=SWITCHOVER_TIMEOUT) as response:
                response.read()
        except (OSError, http.client.HTTPException) as exc:
            detail = exc.read().decode(errors="replace") if hasattr(exc, "read") else exc
            raise ClusterError(f"{self.name}: Patroni refused the switchover: {detail}") from exc
        if not wait_for(lambda: self.serving_port() == target.port, SWITCHOVER_TIMEOUT, 0.2):
            raise ClusterError(
                f"{self.name}: {target.name} did not become the primary behind :{self.port}"
            )
        return primary.name, target.name

    def serving_port(self) -> int | None:
        """The port of the read-write server the proxy leads to now (None: none)."""
        try:
            output = self.sql.psql(
                "SELECT inet_server_port() WHERE NOT pg_is_in_recovery()", dbname="postgres"
            )
        except ClusterError:
            return None
        lines = [line for line in output.splitlines() if line.strip().isdigit()]
        return int(lines[0]) if lines else None

    def members(self) -> list[dict[str, Any]]:
        """Patroni's view of every member (GET /cluster from any that answers)."""
        for node in self.nodes:
            code, body = http_get(f"{node.rest_url}/cluster", timeout=2.0)
            if code == 200:
                try:
                    return list(json.loads(body).get("members") or [])
                except (ValueError, AttributeError):
                    continue
        return []


def stop_leftovers(var: Path, name: str) -> list[str]:
    """Stop a Patroni member or database proxy named `name` that the current
    FLEET_REPLICAS does not configure (`down` after the shape changed). Says what it stopped."""
    stopped = []
    leftovers = [
        (var.absolute() / "patroni" / f"{name}.yml", f"patroni {name}"),
        (var.absolute() / "run" / f"dbproxy-{name}.cfg", f"database proxy {name}"),
    ]
    for path, what in leftovers:
        if not path.exists():
            continue
        marker = os.path.realpath(path) if path.suffix == ".yml" else str(path)
        pids = pids_with_marker(marker)
        if pids:
            if terminate(pids, STOP_TIMEOUT, marker):
                raise ClusterError(f"{what}: pids {pids} did not exit")
            stopped.append(f"{what} (pids {', '.join(map(str, pids))})")
    return stopped
