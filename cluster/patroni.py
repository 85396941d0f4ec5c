"""One Patroni-managed PostgreSQL replica of a database (FLEET_REPLICAS >= 2).

Each replica is a PostgreSQL server run by its own Patroni (Debian's `patroni`), as the
postgres OS user, under var/pg/<database>-n<i>; Patroni elects the primary through the
cluster's etcd, keeps one standby synchronous (a commit returns once the standby has
flushed it, so an acknowledged write survives the primary's death), promotes it when the
primary dies, and brings the old primary back as a standby with pg_rewind.

Clients never name a replica: the database's own port is an HAProxy TCP proxy
(cluster/dbproxy.py) that leads to the primary; cluster/replicated.py puts a database's
members and its proxy together.
"""

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    own_pid,
    pids_with_marker,
    stop_process,
    system_binary,
    tail,
    terminate,
    wait_for,
)
from core.local_cluster import DB_PASSWORD, DB_USER, HOST

START_TIMEOUT = 90.0
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
        return own_pid(self.pid_file, self._marker())

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
                    # etcd unreachable: a primary that still reaches every member over
                    # their REST APIs stays primary, rather than demoting itself and
                    # leaving the database read-only because the arbiter went away.
                    "failsafe_mode": True,
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
        what = f"{self.name} Patroni"
        stopped = stop_process(self.pid(), self.pid_file, self._marker(), what, STOP_TIMEOUT)
        postmaster = self.postmaster_pid()
        if postmaster is not None:  # Patroni died (or was killed) before it could stop it
            # Its command line names the data directory (-D), by its real path.
            if terminate([postmaster], STOP_TIMEOUT, os.path.realpath(self.data_dir)):
                raise ClusterError(f"{self.name}: PostgreSQL pid {postmaster} did not exit")
            stopped = True
        return stopped

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
