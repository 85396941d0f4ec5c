"""The Celery worker (imports uploads) and Celery beat (import kicks and the periodic tasks),
detached, under var/.

Both are started with `celery --detach` and write their own pid files. The absolute pid
file path is on each process's command line (prefork children included), which is how
we tell our processes from anyone else's.
"""

import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cluster.process import VarProcess
from cluster.util import (
    ClusterError,
    pids_with_marker,
    tail,
    terminate,
    wait_for,
)
from core.local_cluster import REPO_ROOT

WORKER_NAME = "worker1"
WORKER_QUEUE = "fleet"
WORKER_CONCURRENCY = 2
START_TIMEOUT = 60.0
# A worker finishes its running tasks on SIGTERM (warm shutdown); imports are short.
STOP_TIMEOUT = 30.0
PING_TIMEOUT = 2


def celery_binary() -> Path:
    return REPO_ROOT / ".venv" / "bin" / "celery"


def celery_env() -> dict[str, str]:
    """The cluster's defaults (settings read core/local_cluster.py) with our settings module."""
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "core.settings"}


@dataclass(frozen=True)
class CeleryProcess(VarProcess):
    """One detached `celery -A core <kind>` process: 'worker' or 'beat'."""

    kind: str
    var: Path

    @property
    def name(self) -> str:
        return f"celery-{self.kind}"

    @property
    def schedule_file(self) -> Path:
        return self.var / "run" / "celerybeat-schedule"

    @property
    def node_name(self) -> str:
        """The worker's Celery node name, as `-n worker1@%h` expands it."""
        return f"{WORKER_NAME}@{socket.gethostname()}"

    def command(self) -> list[str]:
        common = [
            *("--pidfile", str(self.pid_file)),
            *("--logfile", str(self.log_file)),
            *("--loglevel", "INFO"),
            "--detach",
        ]
        if self.kind == "worker":
            return [
                str(celery_binary()),
                *("-A", "core", "worker", "-Q", WORKER_QUEUE),
                f"--concurrency={WORKER_CONCURRENCY}",
                *("-n", f"{WORKER_NAME}@%h"),
                *common,
            ]
        return [
            str(celery_binary()),
            *("-A", "core", "beat", "--schedule", str(self.schedule_file)),
            *common,
        ]

    def answers(self) -> bool:
        """Worker: it answers `inspect ping`. Beat has no such channel: its pid is alive."""
        if self.pid() is None:
            return False
        if self.kind != "worker":
            return True
        try:
            proc = subprocess.run(
                [
                    str(celery_binary()),
                    *("-A", "core", "inspect", "ping"),
                    *("-d", self.node_name, "-t", str(PING_TIMEOUT)),
                ],
                cwd=REPO_ROOT,
                env=celery_env(),
                capture_output=True,
                text=True,
                timeout=PING_TIMEOUT + 30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return proc.returncode == 0 and "pong" in proc.stdout

    def ensure_running(self) -> str:
        if self.pid() is not None:
            return "already running"
        binary = celery_binary()
        if not binary.exists():
            raise ClusterError(f"{binary} not found; run bin/bootstrap")
        # Pool children of a worker whose main process died would still take tasks.
        if terminate(pids_with_marker(self._own_arg()), STOP_TIMEOUT, self._own_arg()):
            raise ClusterError(f"{self.name}: old processes do not exit")
        for path in (self.pid_file, self.log_file):
            path.parent.mkdir(parents=True, exist_ok=True)
        # A stale pid file makes celery refuse to start when its pid was reused.
        self.pid_file.unlink(missing_ok=True)
        self.launch_daemon(self.command(), celery_env())
        return "started"

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait for the detached process's pid file (written once it has started)."""
        if not wait_for(lambda: self.pid() is not None, timeout=timeout, interval=0.2):
            raise ClusterError(
                f"{self.name}: no live process in {self.pid_file} after {timeout:.0f}s. "
                f"Last lines of {self.log_file}:\n{tail(self.log_file)}"
            )

    def stop(self) -> bool:
        """SIGTERM (warm shutdown), SIGKILL after STOP_TIMEOUT. True if it was running."""
        own_arg = self._own_arg()
        main = self.pid()
        pids = pids_with_marker(own_arg)
        if main is None and not pids:
            self.pid_file.unlink(missing_ok=True)
            return False
        if main is not None:
            terminate([main], STOP_TIMEOUT, own_arg)
        if terminate(pids_with_marker(own_arg), STOP_TIMEOUT, own_arg):
            raise ClusterError(f"{self.name}: processes did not exit")
        self.pid_file.unlink(missing_ok=True)
        return True


def worker(var: Path) -> CeleryProcess:
    return CeleryProcess("worker", var)


def beat(var: Path) -> CeleryProcess:
    return CeleryProcess("beat", var)
