"""What every long-running process of ours shares: its files under var/ and its pid check."""

from collections.abc import Sequence
from pathlib import Path

from cluster.util import ClusterError, own_pid, run, tail
from core.local_cluster import REPO_ROOT

LAUNCH_TIMEOUT = 60


class VarProcess:
    """A process known by `name`, with var/run/<name>.pid and var/log/<name>.log.

    Subclasses are dataclasses with a `var` field and a `name` property.
    """

    var: Path
    name: str

    @property
    def pid_file(self) -> Path:
        return self.var / "run" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.var / "log" / f"{self.name}.log"

    def _own_arg(self) -> str:
        """A command-line argument that only this process of this checkout has."""
        return str(self.pid_file)

    def pid(self) -> int | None:
        """The pid from our pid file, if that process is alive and is ours."""
        return own_pid(self.pid_file, self._own_arg())

    def launch_daemon(self, command: Sequence[str], env: dict[str, str]) -> None:
        """Run a command that daemonizes itself; fail with its stderr and the log's tail."""
        # stdin gets EOF at once, so the daemon never holds the caller's terminal.
        proc = run(
            command,
            what=f"{self.name}: start",
            env=env,
            cwd=REPO_ROOT,
            input_text="",
            timeout=LAUNCH_TIMEOUT,
            check=False,
        )
        if proc.returncode != 0:
            raise ClusterError(
                f"{self.name}: {Path(command[0]).name} exited {proc.returncode}:"
                f" {proc.stderr.strip()}\nLast lines of {self.log_file}:\n{tail(self.log_file)}"
            )
