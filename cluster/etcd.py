"""One loopback etcd (Debian's etcd-server) holding Patroni's leader keys.

Only the replicated shape (FLEET_REPLICAS >= 2) needs it. A single member is enough on
one machine: it is the arbiter every Patroni of this cluster agrees through, and it
keeps no data that matters once the databases are down (Patroni writes its state again).
Runs in the foreground in its own session; var/run/etcd.pid is written by us, and the
data directory on its command line marks it as this checkout's.
"""

import subprocess
from dataclasses import dataclass
from pathlib import Path

from cluster.ports import port_in_use
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
from core.local_cluster import HOST

START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0


@dataclass
class Etcd:
    """etcd answering on `port` (clients) and `port + 1` (its own peer port)."""

    var: Path
    port: int
    host: str = HOST

    @property
    def data_dir(self) -> Path:
        return self.var.absolute() / "etcd"

    @property
    def pid_file(self) -> Path:
        return self.var.absolute() / "run" / "etcd.pid"

    @property
    def log_file(self) -> Path:
        return self.var.absolute() / "log" / "etcd.log"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _marker(self) -> str:
        return str(self.data_dir)

    def pid(self) -> int | None:
        return own_pid(self.pid_file, self._marker())

    def is_ready(self) -> bool:
        status, body = http_get(f"{self.url}/health", timeout=2.0)
        return status == 200 and b'"true"' in body

    def ensure_running(self) -> bool:
        """Start etcd unless ours answers. Returns True if it started it now."""
        if self.pid() is not None:
            if wait_for(self.is_ready, timeout=START_TIMEOUT, interval=0.2):
                return False
            raise ClusterError(f"etcd: pid {self.pid()} does not answer on {self.url}")
        mine = self._marker()
        if terminate(pids_with_marker(mine), STOP_TIMEOUT, mine):
            raise ClusterError(f"etcd: an old instance with data in {mine} does not exit")
        for port in (self.port, self.port + 1):
            if port_in_use(port, self.host):
                raise ClusterError(
                    f"etcd: port {port} on {self.host} is taken by something that is not this"
                    " cluster's etcd (set FLEET_ETCD_PORT; etcd uses it and the next port)"
                )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        for path in (self.pid_file, self.log_file):
            path.parent.mkdir(parents=True, exist_ok=True)
        peer = f"http://{self.host}:{self.port + 1}"
        args = [
            system_binary("etcd", sbin=False),
            *("--name", "fleet", "--data-dir", mine),
            *("--listen-client-urls", self.url, "--advertise-client-urls", self.url),
            *("--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer),
            *("--initial-cluster", f"fleet={peer}", "--initial-cluster-state", "new"),
            # Patroni writes a key per member every loop; keep the history small.
            *("--auto-compaction-retention", "1", "--quota-backend-bytes", str(256 << 20)),
            *("--log-level", "warn"),
        ]
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                args,
                cwd=self.var,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        if (
            not wait_for(
                lambda: proc.poll() is not None or self.is_ready(), START_TIMEOUT, interval=0.2
            )
            or proc.poll() is not None
        ):
            raise ClusterError(
                f"etcd: did not start on {self.url} (exit {proc.poll()}). "
                f"Last lines of {self.log_file}:\n{tail(self.log_file)}"
            )
        return True

    def stop(self) -> bool:
        """SIGTERM (then SIGKILL). True if it was running."""
        return stop_process(self.pid(), self.pid_file, self._marker(), "etcd", STOP_TIMEOUT)
