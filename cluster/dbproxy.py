"""HAProxy on a replicated database's own port, leading to the member that is primary now.

Clients (the pooler, operators' psql) connect to the database's port as in the plain
shape; this proxy sends each connection to the member whose Patroni REST API says it is
the primary, and cuts the sessions of a member that stops being it.
"""

from dataclasses import dataclass
from pathlib import Path

from cluster.haproxy import check_config, launch_foreground
from cluster.patroni import STOP_TIMEOUT, PatroniNode
from cluster.ports import port_in_use
from cluster.util import (
    ClusterError,
    own_pid,
    pids_with_marker,
    stop_process,
    tail,
    terminate,
    wait_for,
)
from core.local_cluster import HOST


@dataclass
class DatabaseProxy:
    """HAProxy on the database's own port, leading to the member that is primary now."""

    database: str
    port: int
    nodes: list[PatroniNode]
    var: Path
    host: str = HOST

    @property
    def cfg_file(self) -> Path:
        return self.var.absolute() / "run" / f"dbproxy-{self.database}.cfg"

    @property
    def pid_file(self) -> Path:
        return self.var.absolute() / "run" / f"dbproxy-{self.database}.pid"

    @property
    def log_file(self) -> Path:
        return self.var.absolute() / "log" / f"dbproxy-{self.database}.log"

    def render(self) -> str:
        servers = "\n".join(
            f"    server {node.name} {node.host}:{node.port} check port {node.rest_port}"
            for node in self.nodes
        )
        return "\n".join(
            [
                "# Written by `python -m cluster up`; edits are overwritten.",
                "global",
                "    maxconn 4000",
                "defaults",
                "    mode tcp",
                "    timeout connect 2s",
                # Pooled server connections sit idle for minutes between transactions.
                "    timeout client 1h",
                "    timeout server 1h",
                "    timeout check 2s",
                f"listen {self.database}",
                f"    bind {self.host}:{self.port}",
                # Patroni answers 200 on /primary (OPTIONS: the status line alone, which a
                # check reads whole) only on the member holding the leader key
                # with PostgreSQL running read-write; a member that loses it (died, demoted
                # by a switchover) is marked down and its sessions are cut, so no client
                # keeps writing to a server that is no longer the primary.
                "    option httpchk OPTIONS /primary",
                "    http-check expect status 200",
                "    default-server inter 500ms fastinter 250ms fall 2 rise 1"
                " on-marked-down shutdown-sessions",
                servers,
                "",
            ]
        )

    def _own_arg(self) -> str:
        return str(self.cfg_file)

    def pid(self) -> int | None:
        return own_pid(self.pid_file, self._own_arg())

    def ensure_running(self) -> bool:
        config = self.render()
        current = self.cfg_file.read_text() if self.cfg_file.exists() else None
        if self.pid() is not None and current == config:
            return False
        self.stop()
        mine = self._own_arg()
        if terminate(pids_with_marker(mine), STOP_TIMEOUT, mine):
            raise ClusterError(f"{self.database} proxy: an old HAProxy for {mine} does not exit")
        if port_in_use(self.port, self.host):
            raise ClusterError(
                f"{self.database} proxy: port {self.port} on {self.host} is taken by something"
                " that is not this cluster's database proxy"
            )
        self.cfg_file.parent.mkdir(parents=True, exist_ok=True)
        self.cfg_file.write_text(config)
        check_config(self.cfg_file)
        proc = launch_foreground(self.cfg_file, self.log_file, self.pid_file)
        if (
            not wait_for(lambda: proc.poll() is not None or port_in_use(self.port, self.host), 15)
            or proc.poll() is not None
        ):
            raise ClusterError(
                f"{self.database} proxy: HAProxy did not start (exit {proc.poll()})."
                f" Last lines of {self.log_file}:\n{tail(self.log_file)}"
            )
        return True

    def stop(self) -> bool:
        what = f"{self.database} proxy"
        return stop_process(self.pid(), self.pid_file, self._own_arg(), what, STOP_TIMEOUT)
