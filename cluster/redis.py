"""A loopback Redis server (Debian's redis-server) with its config, pid and data under var/.

Persistence is off: Redis only holds cache entries and Celery broker messages here, all
re-creatable, so restarts start empty and nothing is written to disk.
"""

import os
import signal
import socket
import subprocess
from pathlib import Path

from cluster.ports import port_in_use
from cluster.util import ClusterError, pid_alive, read_pid, system_binary, tail, wait_for
from core.local_cluster import HOST


def _quote(value: str) -> str:
    """Quote a value for redis.conf, so paths with spaces or quotes survive."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def ping(port: int, host: str = HOST, timeout: float = 1.0) -> bool:
    """True if a Redis server answers PING on host:port (inline protocol, no redis-cli needed)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisInstance:
    """redis-server daemonized from a config file we write; identified by its pid file."""

    def __init__(
        self,
        port: int,
        *,
        data_dir: Path,
        conf_file: Path,
        pid_file: Path,
        log_file: Path,
        host: str = HOST,
        port_env: str | None = "FLEET_REDIS_PORT",
    ) -> None:
        self.port = port
        self.data_dir = Path(data_dir).absolute()
        self.conf_file = Path(conf_file).absolute()
        self.pid_file = Path(pid_file).absolute()
        self.log_file = Path(log_file).absolute()
        self.host = host
        self.port_env = port_env

    def url(self, db: int = 0) -> str:
        return f"redis://{self.host}:{self.port}/{db}"

    def pid(self) -> int | None:
        """Pid from our pid file, if that process is alive and is a redis-server."""
        pid = read_pid(self.pid_file)
        return pid if pid is not None and pid_alive(pid, "redis-server") else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def is_ready(self) -> bool:
        return ping(self.port, self.host)

    def _write_config(self) -> None:
        lines = [
            "# Written by `python -m cluster up` on every start; edits are overwritten.",
            f"port {self.port}",
            f"bind {self.host}",
            "protected-mode yes",
            "daemonize yes",
            f"pidfile {_quote(os.path.realpath(self.pid_file))}",
            f"logfile {_quote(os.path.realpath(self.log_file))}",
            f"dir {_quote(os.path.realpath(self.data_dir))}",
            "# Broker and cache data are re-creatable: no RDB snapshots, no AOF.",
            'save ""',
            "appendonly no",
            "",
        ]
        self.conf_file.write_text("\n".join(lines))

    def ensure_running(self) -> bool:
        """Start Redis unless ours already answers. Returns True if it started it now."""
        if self.is_running():
            if wait_for(self.is_ready, timeout=5):
                return False
            raise ClusterError(
                f"redis: pid {self.pid()} from {self.pid_file} does not answer PING on port "
                f"{self.port}; check {self.log_file}"
            )
        if port_in_use(self.port, self.host):
            moved_by = f" (set {self.port_env} to use another port)" if self.port_env else ""
            raise ClusterError(
                f"redis: port {self.port} on {self.host} is taken by something that is not "
                f"this cluster's Redis{moved_by}"
            )
        server = system_binary("redis-server", sbin=False)
        for directory in (self.data_dir, self.conf_file.parent, self.pid_file.parent):
            directory.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.unlink(missing_ok=True)  # stale: its process is gone
        self._write_config()
        proc = subprocess.run(
            [server, str(self.conf_file)], capture_output=True, text=True, timeout=30, check=False
        )
        if proc.returncode != 0 or not wait_for(
            lambda: self.is_ready() and self.is_running(), timeout=15
        ):
            raise ClusterError(
                f"redis: did not start on port {self.port} (exit {proc.returncode}). "
                f"{proc.stderr.strip()}\nLast lines of {self.log_file}:\n{tail(self.log_file)}"
            )
        return True

    def stop(self) -> bool:
        """SIGTERM the server from our pid file and wait for it. Returns True if it was running."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        if not wait_for(lambda: not pid_alive(pid, "redis-server"), timeout=30):
            raise ClusterError(f"redis: pid {pid} did not exit within 30s of SIGTERM")
        self.pid_file.unlink(missing_ok=True)
        return True
