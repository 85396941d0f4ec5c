"""PgBouncer in front of one loopback PostgreSQL instance, in transaction-pooling mode.

Each PostgreSQL instance of the local cluster gets a pooler of its own, as each
database host does in the Ansible deployment: `[databases]` is a wildcard, so every
database on that server (the cluster's, the tests' `test_*` ones, a shard created
later) is pooled, each with at most POOL_SIZE server connections however many
clients connect. Its files live in var/pgbouncer/<name>.*; as root it runs as the
postgres OS user (PgBouncer, like PostgreSQL, refuses root).
"""

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg2

from cluster.ports import port_in_use
from cluster.postgres import as_server_user, give_to_server_user, prepare_server_dir
from cluster.util import (
    ClusterError,
    own_pid,
    run,
    stop_process,
    system_binary,
    tail,
    wait_for,
)
from core.local_cluster import DB_PASSWORD, DB_USER, HOST, POOL_SIZE, pooler_port
from core.pooler import PoolFigures, read_pool

START_TIMEOUT = 15
STOP_TIMEOUT = 15
# Clients one pooler accepts: every uWSGI thread and Celery process of a scaled-up app
# tier, with room; each costs PgBouncer a file descriptor and a few kB, not a server.
MAX_CLIENT_CONN = 4000
QUERY_WAIT_TIMEOUT = 20


class Pooler:
    """The pooler named `name` in front of the PostgreSQL instance on `server_port`."""

    def __init__(
        self, name: str, server_port: int, var: Path, *, pool_size: int = POOL_SIZE
    ) -> None:
        self.name = name
        self.server_port = server_port
        self.port = pooler_port(server_port)
        self.dir = Path(var).absolute() / "pgbouncer"
        if pool_size < 1:
            # 0 would give no server connection at all: every query would wait, then fail.
            raise ClusterError(f"FLEET_POOL_SIZE={pool_size}: a pool needs at least 1 connection")
        self.pool_size = pool_size

    def __repr__(self) -> str:
        return f"Pooler(name={self.name!r}, port={self.port}, server_port={self.server_port})"

    @property
    def ini_file(self) -> Path:
        return self.dir / f"{self.name}.ini"

    @property
    def pid_file(self) -> Path:
        return self.dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.dir / f"{self.name}.log"

    @property
    def users_file(self) -> Path:
        return self.dir / f"{self.name}.users"

    def _marker(self) -> str:
        """The config path on the command line: only this checkout's pooler has it."""
        return os.path.realpath(self.ini_file)

    def pid(self) -> int | None:
        return own_pid(self.pid_file, self._marker())

    def is_ready(self) -> bool:
        try:
            self.pool("pgbouncer")
        except (psycopg2.Error, ClusterError):
            return False
        return True

    def _login(self) -> dict[str, object]:
        return {"host": HOST, "port": self.port, "user": DB_USER, "password": DB_PASSWORD}

    def pool(self, dbname: str) -> PoolFigures:
        """The pool figures of `dbname` (its clients, server connections, waiting)."""
        return read_pool(self._login(), dbname)

    def _console(self) -> psycopg2.extensions.connection:
        connection = psycopg2.connect(**self._login(), dbname="pgbouncer", connect_timeout=5)
        connection.autocommit = True  # the console knows no transactions
        return connection

    @contextlib.contextmanager
    def paused(self, dbname: str, timeout: float) -> Iterator[None]:
        """Hold new transactions on `dbname` while the body runs; resume them after.

        PAUSE returns once every transaction in flight has finished and the pooler has
        closed its server connections; clients then wait in the pooler (up to
        QUERY_WAIT_TIMEOUT) instead of failing, and RESUME hands them fresh connections,
        to whichever server is primary by then. A transaction still open after `timeout`
        seconds (a long move, say) makes it give up and resume without running the body.
        """
        done = threading.Event()
        failure: list[BaseException] = []

        def pause() -> None:
            try:
                with contextlib.closing(self._console()) as console:
                    console.cursor().execute(f'PAUSE "{dbname}"')
            except BaseException as exc:  # reported by the caller's thread
                failure.append(exc)
            finally:
                done.set()

        threading.Thread(target=pause, daemon=True).start()
        try:
            if not done.wait(timeout):
                raise ClusterError(
                    f"{self.name} pooler: transactions on {dbname} still open after"
                    f" {timeout:.0f}s; nothing was changed"
                )
            if failure:
                raise ClusterError(f"{self.name} pooler: PAUSE failed: {failure[0]}")
            yield
        finally:
            self._resume(dbname)

    def _resume(self, dbname: str) -> None:
        try:
            with contextlib.closing(self._console()) as console:
                console.cursor().execute(f'RESUME "{dbname}"')
        except psycopg2.Error as exc:
            if "not paused" not in str(exc):
                raise ClusterError(f"{self.name} pooler: RESUME {dbname} failed: {exc}") from exc

    def _config(self) -> str:
        real = os.path.realpath
        lines = [
            "; Written by `python -m cluster up` on every start; edits are overwritten.",
            "[databases]",
            f"* = host={HOST} port={self.server_port}",
            "",
            "[pgbouncer]",
            f"listen_addr = {HOST}",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            f"pidfile = {real(self.pid_file)}",
            f"logfile = {real(self.log_file)}",
            "auth_type = scram-sha-256",
            f"auth_file = {real(self.users_file)}",
            # Transaction pooling: a server connection serves one transaction at a time,
            # so no session state (session advisory locks, SET, server-side cursors
            # outside a transaction) may be relied upon; docs/pooling.md.
            "pool_mode = transaction",
            f"default_pool_size = {self.pool_size}",
            f"max_db_connections = {self.pool_size}",
            "reserve_pool_size = 0",
            f"max_client_conn = {MAX_CLIENT_CONN}",
            f"stats_users = {DB_USER}",
            # PAUSE and RESUME around a planned switchover (python -m cluster switchover).
            f"admin_users = {DB_USER}",
            # A server that went away is tried again after a second, not PgBouncer's 15:
            # until then clients get "cannot connect to server" at once (the app's 503).
            "server_login_retry = 1",
            "server_connect_timeout = 5",
            # A client queued this long for a server connection gets an error instead of
            # waiting out the request's own timeout (uWSGI's harakiri, 30 s).
            f"query_wait_timeout = {QUERY_WAIT_TIMEOUT}",
            # JDBC and some drivers send it; harmless to accept.
            "ignore_startup_parameters = extra_float_digits",
            "log_connections = 0",
            "log_disconnections = 0",
            "",
        ]
        return "\n".join(lines)

    def ensure_running(self) -> bool:
        """Start the pooler unless ours answers. Returns True if it started it now."""
        pid = self.pid()
        if pid is not None:
            if self.ini_file.read_text() != self._config():
                # Written by an older checkout: SIGHUP makes PgBouncer read it again.
                self.ini_file.write_text(self._config())
                os.kill(pid, signal.SIGHUP)
            if wait_for(self.is_ready, timeout=START_TIMEOUT):
                return False
            raise ClusterError(
                f"{self.name} pooler: pid {self.pid()} does not answer on port {self.port};"
                f" check {self.log_file}"
            )
        if port_in_use(self.port, HOST):
            raise ClusterError(
                f"{self.name} pooler: port {self.port} on {HOST} is taken by something that"
                " is not this cluster's PgBouncer (set FLEET_POOLER_PORT_OFFSET to move every"
                " pooler)"
            )
        # The pooler writes its pid and log file here.
        give_to_server_user(prepare_server_dir(self.dir))
        self.pid_file.unlink(missing_ok=True)  # stale: its process is gone
        self.users_file.write_text(f'"{DB_USER}" "{DB_PASSWORD}"\n')
        self.users_file.chmod(0o600)
        self.ini_file.write_text(self._config())
        for path in (self.users_file, self.ini_file):
            give_to_server_user(path)
        proc = run(
            as_server_user([system_binary("pgbouncer"), "-d", self._marker()]),
            what=f"{self.name} pooler: start",
            cwd="/",
            check=False,
        )
        if proc.returncode != 0 or not wait_for(self.is_ready, timeout=START_TIMEOUT):
            raise ClusterError(
                f"{self.name} pooler: did not start on port {self.port} (exit"
                f" {proc.returncode}). {proc.stderr.strip()}\nLast lines of {self.log_file}:\n"
                f"{tail(self.log_file)}"
            )
        return True

    def stop(self) -> bool:
        """Immediate shutdown (SIGTERM, then SIGKILL). Returns True if it was running."""
        what = f"{self.name} pooler"
        return stop_process(self.pid(), self.pid_file, self._marker(), what, STOP_TIMEOUT)
