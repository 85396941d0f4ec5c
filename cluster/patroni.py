"""A database served by Patroni-managed PostgreSQL replicas (FLEET_REPLICAS >= 2).

Each replica is a PostgreSQL server run by its own Patroni (Debian's `patroni`), as the
postgres OS user, under var/pg/<database>-n<i>; Patroni elects the primary through the
cluster's etcd, keeps one standby synchronous (a commit returns once the standby has
flushed it, so an acknowledged write survives the primary's death), promotes it when the
primary dies, and brings the old primary back as a standby with pg_rewind.

Clients never name a replica: the database's own port is an HAProxy TCP proxy
(`DatabaseProxy`) that sends every connection to the member whose Patroni REST API
answers 200 on /primary, and closes the sessions of a member that stops being it.
The pooler sits in front of that port as in the plain shape.
"""

import http.client
import json
import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.haproxy import check_config, launch_foreground
from cluster.ports import port_in_use
from cluster.postgres import (
    PG_OS_USER,
    PostgresInstance,
    find_bin_dir,
    give_to_server_user,
    postgres_account,
    prepare_server_dir,
    running_as_root,
)
from cluster.util import (
    ClusterError,
    http_get,
    pids_with_marker,
    read_pid,
    runs_with_arg,
    system_binary,
    tail,
    terminate,
    wait_for,
)
from core.local_cluster import DB_PASSWORD, DB_USER, HOST, node_port, patroni_port

START_TIMEOUT = 90.0
SWITCHOVER_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
REPLICATION_USER = "replicator"
# Development-only, like DB_PASSWORD: the instances listen on loopback alone.
REPLICATION_PASSWORD = "fleet-replication-local"
NAMESPACE = "/fleet/"

# Leader key lifetime and loop: a dead primary's key expires after TTL seconds, then a
# synchronous standby takes over (Patroni needs loop_wait + 2 * retry_timeout <= ttl).
DCS_TIMING = {"ttl": 10, "loop_wait": 1, "retry_timeout": 4}
# The plain shape's server settings (cluster/postgres.py) plus what replication needs.
SERVER_PARAMETERS: dict[str, Any] = {
    "max_connections": 200,
    "shared_buffers": "128MB",
    "fsync": "on",
    "wal_level": "replica",
    "hot_standby": "on",
    "max_wal_senders": 10,
    "max_replication_slots": 10,
    "wal_keep_size": "256MB",
    "wal_log_hints": "on",
    "synchronous_commit": "on",
}


def member_name(database: str, replica: int) -> str:
    return f"{database}-n{replica}"


@dataclass
class PatroniNode:
    """Replica `replica` of `database`: PostgreSQL on `port`, Patroni's REST API on `rest_port`."""

    database: str
    replica: int
    port: int
    rest_port: int
    var: Path
    etcd_port: int
    host: str = HOST

    @property
    def name(self) -> str:
        return member_name(self.database, self.replica)

    @property
    def scope(self) -> str:
        return f"fleet-{self.database}"

    @property
    def config_file(self) -> Path:
        return self.var.absolute() / "patroni" / f"{self.name}.yml"

    @property
    def pid_file(self) -> Path:
        return self.var.absolute() / "patroni" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.var.absolute() / "log" / f"{self.name}.log"

    @property
    def home(self) -> Path:
        """var/pg/<member>, the postgres user's: Patroni removes and remakes `data` in it
        (a replica cloned again, say), which needs a parent of its own."""
        return self.var.absolute() / "pg" / self.name

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}"

    def _marker(self) -> str:
        return os.path.realpath(self.config_file)

    # -- state -------------------------------------------------------------------

    def pid(self) -> int | None:
        pid = read_pid(self.pid_file)
        return pid if pid is not None and runs_with_arg(pid, self._marker()) else None

    def postmaster_pid(self) -> int | None:
        """The PostgreSQL server Patroni runs, by the data directory's postmaster.pid."""
        return PostgresInstance("data", self.port, self.home, self.log_file.parent).pid()

    def status(self) -> dict[str, Any]:
        """Patroni's view of this member (GET /patroni), {} when it does not answer."""
        code, body = http_get(f"{self.rest_url}/patroni", timeout=2.0)
        if code == 0:
            return {}
        try:
            data = json.loads(body)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def is_primary(self) -> bool:
        code, _ = http_get(f"{self.rest_url}/primary", timeout=2.0)
        return code == 200

    def is_running(self) -> bool:
        """Patroni answers and its PostgreSQL runs (as primary or streaming standby)."""
        return self.status().get("state") == "running"

    # -- config ------------------------------------------------------------------

    def config(self, bin_dir: Path) -> dict[str, Any]:
        data_dir = os.path.realpath(self.data_dir)
        superuser = {"username": DB_USER, "password": DB_PASSWORD}
        return {
            "scope": self.scope,
            "namespace": NAMESPACE,
            "name": self.name,
            "log": {"level": "WARNING"},
            "restapi": {
                "listen": f"{self.host}:{self.rest_port}",
                "connect_address": f"{self.host}:{self.rest_port}",
            },
            "etcd3": {"hosts": [f"{self.host}:{self.etcd_port}"]},
            "bootstrap": {
                "dcs": {
                    **DCS_TIMING,
                    # A commit waits for the synchronous standby; if that standby is gone the
                    # primary goes on alone (not strict), and only a synchronous standby may
                    # be promoted, so nothing acknowledged is lost in a failover.
                    "synchronous_mode": True,
                    "maximum_lag_on_failover": 1 << 20,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": SERVER_PARAMETERS,
                    },
                },
                "initdb": [
                    {"encoding": "UTF8"},
                    {"locale": "C.UTF-8"},
                    {"auth": "scram-sha-256"},
                ],
            },
            "postgresql": {
                "listen": f"{self.host}:{self.port}",
                "connect_address": f"{self.host}:{self.port}",
                "data_dir": data_dir,
                "bin_dir": str(bin_dir),
                "pgpass": os.path.realpath(self.config_file.with_suffix(".pgpass")),
                "authentication": {
                    "superuser": superuser,
                    "replication": {
                        "username": REPLICATION_USER,
                        "password": REPLICATION_PASSWORD,
                    },
                    "rewind": superuser,
                },
                "parameters": {"unix_socket_directories": ""},
                "pg_hba": [
                    f"host replication {REPLICATION_USER} {self.host}/32 scram-sha-256",
                    f"host all all {self.host}/32 scram-sha-256",
                ],
            },
        }

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> bool:
        """Start this member's Patroni unless it runs. True if it started it now.

        Does not wait: a standby's Patroni clones the primary first (pg_basebackup).
        """
        if self.pid() is not None:
            return False
        mine = self._marker() if self.config_file.exists() else None
        if mine and terminate(pids_with_marker(mine), STOP_TIMEOUT, mine):
            raise ClusterError(f"{self.name}: an old Patroni for {mine} does not exit")
        for port, what in ((self.port, "PostgreSQL"), (self.rest_port, "Patroni REST API")):
            if port_in_use(port, self.host):
                raise ClusterError(
                    f"{self.name}: port {port} ({what}) on {self.host} is taken by something"
                    " that is not this member (set FLEET_NODE_PORT_OFFSET /"
                    " FLEET_PATRONI_PORT_OFFSET)"
                )
        prepare_server_dir(self.home.parent)
        home = prepare_server_dir(self.home)
        home.chmod(0o700)
        give_to_server_user(home)
        give_to_server_user(prepare_server_dir(self.config_file.parent))
        self.config_file.write_text(json.dumps(self.config(find_bin_dir()), indent=2) + "\n")
        self.config_file.chmod(0o600)  # holds the passwords
        give_to_server_user(self.config_file)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                [system_binary("patroni", sbin=False), self._marker()],
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=_server_env(),
                **_as_server_user(),
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        return True

    def wait_running(self, timeout: float = START_TIMEOUT) -> None:
        if not wait_for(self.is_running, timeout=timeout, interval=0.5):
            raise ClusterError(
                f"{self.name}: Patroni did not report PostgreSQL running within {timeout:.0f}s"
                f" ({self.status() or 'no answer on ' + self.rest_url}). Last lines of"
                f" {self.log_file}:\n{tail(self.log_file)}"
            )

    def stop(self) -> bool:
        """SIGTERM Patroni: it stops PostgreSQL (fast) and gives up the leader key."""
        pid = self.pid()
        if pid is None:
            return False
        if terminate([pid], STOP_TIMEOUT, self._marker()):
            raise ClusterError(f"{self.name}: Patroni pid {pid} did not exit")
        self.pid_file.unlink(missing_ok=True)
        postmaster = self.postmaster_pid()
        if postmaster is not None:  # Patroni was killed before it could stop it
            terminate([postmaster], STOP_TIMEOUT, "postgres")
        return True

    def kill(self) -> list[int]:
        """SIGKILL Patroni and its PostgreSQL at once, as a server's sudden death would.

        The leader key stays in etcd until its TTL runs out; returns the pids killed.
        """
        pids = [pid for pid in (self.pid(), self.postmaster_pid()) if pid is not None]
        for pid in pids:
            os.kill(pid, 9)
        wait_for(lambda: not port_in_use(self.port, self.host), timeout=10)
        return pids


def _as_server_user() -> dict[str, Any]:
    """Popen keywords that drop root to the postgres user (Patroni refuses nothing, but
    PostgreSQL does, and its files must belong to that user)."""
    if not running_as_root():
        return {}
    return {"user": PG_OS_USER, "group": PG_OS_USER, "extra_groups": []}


def _server_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    if running_as_root():
        env.update(HOME=postgres_account().pw_dir, USER=PG_OS_USER, LOGNAME=PG_OS_USER)
    return env


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
        pid = read_pid(self.pid_file)
        return pid if pid is not None and runs_with_arg(pid, self._own_arg()) else None

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
        pid = self.pid()
        if pid is None:
            return False
        if terminate([pid], STOP_TIMEOUT, self._own_arg()):
            raise ClusterError(f"{self.database} proxy: pid {pid} did not exit")
        self.pid_file.unlink(missing_ok=True)
        return True


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
