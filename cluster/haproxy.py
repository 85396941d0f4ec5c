"""HAProxy in front of the app nodes: config rendered from the node list, run in the foreground.

HAProxy runs as `haproxy -f var/run/haproxy.cfg -db` in its own session, its output
(the access log included) appended to var/log/haproxy.log; we write its pid to
var/run/haproxy.pid ourselves. The config path on its command line identifies it, so a
system HAProxy (Debian's service) is never touched.
"""

import csv
import io
import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

from cluster.appnodes import AppNode
from cluster.limits import CLIENT_MAXCONN, haproxy_bufsize, upload_max_bytes
from cluster.ports import port_in_use
from cluster.util import (
    ClusterError,
    http_get,
    own_pid,
    pids_with_marker,
    run,
    stop_process,
    system_binary,
    tail,
    terminate,
    wait_for,
)
from core.local_cluster import HOST

TEMPLATE = Path(__file__).with_name("templates") / "haproxy.cfg"
BACKEND = "app_nodes"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0


def haproxy_binary() -> str:
    return system_binary("haproxy")


def render_haproxy_cfg(
    nodes: Sequence[AppNode],
    *,
    http_port: int,
    stats_port: int,
    stats_user: str,
    stats_password: str,
    upload_max_bytes: int,
    client_maxconn: int = CLIENT_MAXCONN,
    host: str = HOST,
) -> str:
    """The HAProxy config for `nodes`; pure, so tests can check it."""
    if not nodes:
        raise ClusterError("haproxy: no app nodes to balance (FLEET_APP_PORTS is empty)")
    for secret in (stats_user, stats_password):
        if not secret or any(ch.isspace() or ch in "#:'\"\\" for ch in secret):
            raise ClusterError("haproxy: stats credentials must be non-empty plain tokens")
    servers = "\n".join(
        f"    server {node.name} {node.host}:{node.port} check maxconn {node.request_slots}"
        for node in nodes
    )
    return Template(TEMPLATE.read_text()).substitute(
        host=host,
        http_port=http_port,
        stats_port=stats_port,
        stats_user=stats_user,
        stats_password=stats_password,
        servers=servers,
        upload_max_bytes=upload_max_bytes,
        bufsize=haproxy_bufsize(upload_max_bytes),
        client_maxconn=client_maxconn,
    )


def launch_foreground(cfg_file: Path, log_file: Path, pid_file: Path) -> subprocess.Popen:
    """`haproxy -f cfg_file -db` in a session of its own, output appended to `log_file`.

    The caller waits for its listeners; the config path marks the process as ours.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            [haproxy_binary(), "-f", str(cfg_file), "-db"],
            cwd=cfg_file.parent,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pid_file.write_text(f"{proc.pid}\n")
    return proc


def check_config(path: Path) -> None:
    """`haproxy -c -f path`; raises ClusterError with HAProxy's complaint if it is invalid."""
    run([haproxy_binary(), "-c", "-q", "-f", str(path)], what=f"haproxy -c -f {path}")


@dataclass
class HAProxy:
    """Our HAProxy: the frontend on `http_port`, stats on `stats_port`, files under `var`."""

    var: Path
    nodes: Sequence[AppNode]
    http_port: int
    stats_port: int
    stats_user: str
    stats_password: str
    host: str = HOST
    # None: Django's own limit, read when the config is rendered.
    upload_max_bytes: int | None = None

    @property
    def cfg_file(self) -> Path:
        return self.var / "run" / "haproxy.cfg"

    @property
    def pid_file(self) -> Path:
        return self.var / "run" / "haproxy.pid"

    @property
    def log_file(self) -> Path:
        return self.var / "log" / "haproxy.log"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}/"

    @property
    def stats_url(self) -> str:
        return f"http://{self.host}:{self.stats_port}/"

    def render(self) -> str:
        return render_haproxy_cfg(
            self.nodes,
            http_port=self.http_port,
            stats_port=self.stats_port,
            stats_user=self.stats_user,
            stats_password=self.stats_password,
            upload_max_bytes=(
                self.upload_max_bytes if self.upload_max_bytes is not None else upload_max_bytes()
            ),
            host=self.host,
        )

    def _own_arg(self) -> str:
        return str(self.cfg_file)

    def pid(self) -> int | None:
        return own_pid(self.pid_file, self._own_arg())

    # -- health ------------------------------------------------------------------

    def frontend_ready(self) -> bool:
        """/healthz through the frontend answers 200 (some node is in rotation)."""
        status, _ = http_get(f"{self.url}healthz", timeout=2.0)
        return status == 200

    def stats_ready(self) -> bool:
        status, _ = http_get(self.stats_url, auth=(self.stats_user, self.stats_password))
        return status == 200

    def server_states(self) -> dict[str, str]:
        """{server name: status} of the backend from the stats CSV (UP, DOWN, ...); {} if none."""
        status, body = http_get(
            f"{self.stats_url};csv", auth=(self.stats_user, self.stats_password)
        )
        if status != 200:
            return {}
        return parse_server_states(body.decode("utf-8", "replace"))

    def wait_all_up(self, timeout: float, names: Sequence[str] | None = None) -> dict[str, str]:
        """Wait until every node (or those `names`) is fully UP in HAProxy's view.

        Returns the last states seen; "UP 1/2" (a check just failed) does not count.
        """
        names = list(names) if names is not None else [node.name for node in self.nodes]
        states: dict[str, str] = {}

        def all_up() -> bool:
            nonlocal states
            states = self.server_states()
            return all(states.get(name) == "UP" for name in names)

        if not wait_for(all_up, timeout=timeout, interval=0.25):
            raise ClusterError(
                f"haproxy: {', '.join(names)} not UP after {timeout:.0f}s: {states or 'no stats'}"
            )
        return states

    # -- process -----------------------------------------------------------------

    def ensure_running(self) -> str:
        """Start HAProxy, or restart it when its config changed. Says what it did."""
        config = self.render()
        self.cfg_file.parent.mkdir(parents=True, exist_ok=True)
        running = self.pid() is not None
        current = self.cfg_file.read_text() if self.cfg_file.exists() else None
        if running and current == config:
            return "already running"
        # Validate before touching the running instance or the file it was started from.
        fd, candidate = tempfile.mkstemp(dir=self.cfg_file.parent, prefix=".haproxy.cfg.")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(config)
            os.chmod(candidate, 0o600)  # holds the stats password
            check_config(Path(candidate))
            if running:
                self.stop()
            os.replace(candidate, self.cfg_file)
        except BaseException:
            Path(candidate).unlink(missing_ok=True)
            raise
        self.start()
        return "restarted (config changed)" if running else "started"

    def start(self) -> None:
        # An instance of ours the pid file no longer names (it was rewritten, or lost)
        # still holds the ports: it is ours, by its config path, so it goes.
        mine = self._own_arg()
        if terminate(pids_with_marker(mine), STOP_TIMEOUT, mine):
            raise ClusterError(f"haproxy: an old instance running {mine} does not exit")
        # A stopped instance's threads may hold its listeners a moment after its main
        # thread is gone (the acceptance run of #18 saw a restart refused that way).
        ports = (self.http_port, self.stats_port)
        wait_for(lambda: not any(port_in_use(port, self.host) for port in ports), STOP_TIMEOUT)
        for port in ports:
            if port_in_use(port, self.host):
                raise ClusterError(
                    f"haproxy: port {port} on {self.host} is taken by something that is not "
                    "this cluster's HAProxy (set FLEET_HTTP_PORT / FLEET_STATS_PORT)"
                )
        proc = launch_foreground(self.cfg_file, self.log_file, self.pid_file)

        def listening() -> bool:
            return proc.poll() is not None or (
                port_in_use(self.http_port, self.host) and port_in_use(self.stats_port, self.host)
            )

        wait_for(listening, timeout=START_TIMEOUT)
        if proc.poll() is not None or not self.stats_ready():
            raise ClusterError(
                f"haproxy: did not start (exit {proc.poll()}). "
                f"Last lines of {self.log_file}:\n{tail(self.log_file)}"
            )

    def stop(self) -> bool:
        """SIGTERM our HAProxy (it closes its listeners at once). True if it was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)  # a stale one
        return stop_process(pid, self.pid_file, self._own_arg(), "haproxy", STOP_TIMEOUT)


def parse_server_states(stats_csv: str) -> dict[str, str]:
    """Server rows of our backend in HAProxy's stats CSV (header line starts with '# ')."""
    reader = csv.DictReader(io.StringIO(stats_csv.removeprefix("# ")))
    return {
        row["svname"]: row["status"]
        for row in reader
        if row.get("pxname") == BACKEND and row.get("svname") not in ("FRONTEND", "BACKEND")
    }
