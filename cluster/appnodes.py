"""uWSGI app nodes: one daemonized uWSGI master per port, each with its ini, pid and fifo.

Each node's config is rendered from cluster/templates/uwsgi.ini into var/run/app-N.ini;
that absolute path is on the master's and the workers' command lines, which is how we
recognise our own processes (and only those) when stopping or cleaning up.
"""

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from cluster.limits import upload_max_bytes
from cluster.ports import bindable, port_in_use
from cluster.process import VarProcess
from cluster.util import (
    ClusterError,
    http_get,
    pids_with_marker,
    runs_with_arg,
    tail,
    terminate,
    wait_for,
)
from core.local_cluster import APP_PROCESSES, APP_THREADS, HOST, REPO_ROOT

TEMPLATE = Path(__file__).with_name("templates") / "uwsgi.ini"
THREADS_PER_WORKER = APP_THREADS
HARAKIRI_SECONDS = 30
# Recycling a threaded uWSGI worker can kill requests it is still serving (uWSGI fires
# harakiri on it: unbit/uwsgi#2606, #480); a run of the e2e tests saw a 502 that way at
# 5000. So recycling is a rare guard against slow leaks, not a routine event.
MAX_REQUESTS = 100_000
# Worker N recycles after MAX_REQUESTS + N * delta requests, so they never all restart at once.
MAX_REQUESTS_DELTA = 10_000
# The local cluster is what the project's own load tools drive: the benchmarks send each
# device's uploads back to back, the e2e device load 20 a second, and Locust swarms enrol
# hundreds of devices with one fleet key. So its nodes run with rate limits far above
# the defaults (core/settings.py, docs/security.md); a variable set in the environment of
# `up` wins. Login lockouts and the wrong-key throttle keep their defaults.
LOAD_TOOL_LIMITS = {
    "DEVICE_RATE_LIMIT": "100000/minute",
    "ENROLL_KEY_RATE_LIMIT": "100000/hour",
}
# Importing Django and the project in every worker (lazy-apps) takes a few seconds.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def default_processes() -> int:
    """FLEET_APP_PROCESSES, or one worker process per CPU core."""
    return APP_PROCESSES or os.cpu_count() or 1


def uwsgi_binary() -> Path:
    """The virtualenv's uwsgi (pip builds it), so nodes run the project's Python."""
    return REPO_ROOT / ".venv" / "bin" / "uwsgi"


@dataclass(frozen=True)
class AppNode(VarProcess):
    """App node `index` (1-based) listening on `port`, with its files under `var`."""

    index: int
    port: int
    var: Path
    host: str = HOST
    processes: int = field(default_factory=default_processes)
    # Bodies over this are dropped unread (uWSGI's limit-post); None: Django's own limit,
    # read when the config is written (`down` and `status` need no Django settings).
    body_limit: int | None = None

    @property
    def name(self) -> str:
        return f"app-{self.index}"

    @property
    def post_limit(self) -> int:
        """The body limit uWSGI enforces: `body_limit`, else Django's own."""
        return self.body_limit if self.body_limit is not None else upload_max_bytes()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    @property
    def ini_file(self) -> Path:
        return self.var / "run" / f"{self.name}.ini"

    @property
    def fifo(self) -> Path:
        return self.var / "run" / f"{self.name}.fifo"

    @property
    def livez_file(self) -> Path:
        """What uWSGI itself answers to HAProxy's check, GET /livez (no Python involved)."""
        return self.var / "run" / "livez"

    # -- config ------------------------------------------------------------------

    @property
    def request_slots(self) -> int:
        """Requests HAProxy may have in flight here (its per-server maxconn): every thread
        but one. The spare thread answers HAProxy's health check at once; a check queued
        behind requests times out and takes a node that is merely busy out of rotation."""
        return max(1, self.processes * THREADS_PER_WORKER - 1)

    def render(self) -> str:
        """This node's uwsgi.ini."""
        return render_uwsgi_ini(self, self.processes)

    # -- process -----------------------------------------------------------------

    def _own_arg(self) -> str:
        return str(self.ini_file)  # the master and its workers all run with our ini

    def is_ready(self) -> bool:
        """GET /healthz on the node itself answers 200."""
        status, _ = http_get(f"{self.url}healthz", timeout=2.0)
        return status == 200

    def ensure_running(self) -> str:
        """Start the node unless it runs with the current config. Says what it did."""
        config = self.render()
        running = self.pid() is not None
        if running and _read(self.ini_file) == config:
            return "already running"
        restarted = running
        if running:
            self.stop()
        self.start(config)
        return "restarted (config changed)" if restarted else "started"

    def start(self, config: str) -> None:
        """Launch the daemonized master; `wait_ready` waits for it to answer."""
        binary = uwsgi_binary()
        if not binary.exists():
            raise ClusterError(f"{binary} not found; run bin/bootstrap (pip installs uwsgi)")
        # Workers left behind by a master that was killed hold the port: they are ours.
        leftovers = terminate(pids_with_marker(self._own_arg()), STOP_TIMEOUT, self._own_arg())
        if leftovers:
            raise ClusterError(f"{self.name}: old processes {leftovers} do not exit")
        if port_in_use(self.port, self.host) or not bindable(self.port, self.host):
            raise ClusterError(
                f"{self.name}: port {self.port} on {self.host} is taken by something that is "
                "not this cluster's app node (a server, or an outgoing connection when the"
                " port is in the kernel's ephemeral range; set FLEET_APP_PORTS to use other"
                " ports)"
            )
        for path in (self.ini_file, self.log_file):
            path.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.unlink(missing_ok=True)
        self.fifo.unlink(missing_ok=True)
        self.ini_file.write_text(config)
        self.livez_file.write_text("ok\n")
        env = {**LOAD_TOOL_LIMITS, **os.environ, "DJANGO_SETTINGS_MODULE": "core.settings"}
        self.launch_daemon([str(binary), "--ini", str(self.ini_file)], env)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until the master is up and /healthz answers 200."""
        if not wait_for(lambda: self.pid() is not None and self.is_ready(), timeout=timeout):
            raise ClusterError(
                f"{self.name}: no 200 from {self.url}healthz within {timeout:.0f}s. "
                f"Last lines of {self.log_file}:\n{tail(self.log_file)}"
            )

    def worker_pids(self) -> list[int]:
        """This node's processes other than the master."""
        master = self.pid()
        return [pid for pid in pids_with_marker(self._own_arg()) if pid != master]

    def reload(self, timeout: float = START_TIMEOUT) -> bool:
        """Graceful reload via the master fifo (`r`), waiting until it serves again.

        Workers finish their requests, then the master re-executes itself and loads the
        code anew; its socket stays open, so connections wait rather than fail. Done when
        every old worker is gone and /healthz answers. False when the node is not running.
        """
        old_workers = self.worker_pids()
        if not self._send_to_fifo(b"r"):
            return False
        own_arg = self._own_arg()
        reloaded = wait_for(
            lambda: not any(runs_with_arg(pid, own_arg) for pid in old_workers) and self.is_ready(),
            timeout=timeout,
        )
        if not reloaded:
            raise ClusterError(
                f"{self.name}: not serving {timeout:.0f}s after a reload. "
                f"Last lines of {self.log_file}:\n{tail(self.log_file)}"
            )
        return True

    def _send_to_fifo(self, command: bytes) -> bool:
        """Write a command to the master fifo; False when the node is not running.

        Opening the fifo never blocks: without a reader (master gone) it fails with ENXIO.
        """
        if self.pid() is None:
            return False
        try:
            fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno in (errno.ENXIO, errno.ENOENT):
                return False
            raise
        try:
            os.write(fd, command)
        finally:
            os.close(fd)
        return True

    def stop(self) -> bool:
        """SIGTERM the master (die-on-term: it stops its workers), then sweep leftovers.

        Returns True if anything of this node was running.
        """
        own_arg = self._own_arg()
        master = self.pid()
        if master is None and not pids_with_marker(own_arg):
            return False
        if master is not None:
            # The master first, so it does not respawn the workers we signal.
            terminate([master], STOP_TIMEOUT, own_arg)
        leftovers = terminate(pids_with_marker(own_arg), STOP_TIMEOUT, own_arg)
        if leftovers:
            raise ClusterError(f"{self.name}: processes {leftovers} did not exit")
        self.pid_file.unlink(missing_ok=True)
        self.fifo.unlink(missing_ok=True)
        return True


def render_uwsgi_ini(node: AppNode, processes: int) -> str:
    """The node's uWSGI config from the template; pure, so tests can check it."""
    template = Template(TEMPLATE.read_text())
    return template.substitute(
        name=node.name,
        host=node.host,
        port=node.port,
        repo_root=REPO_ROOT,
        virtualenv=REPO_ROOT / ".venv",
        processes=processes,
        threads=THREADS_PER_WORKER,
        harakiri=HARAKIRI_SECONDS,
        max_requests=MAX_REQUESTS,
        max_requests_delta=MAX_REQUESTS_DELTA,
        limit_post=node.post_limit,
        static_root=node.var / "static",
        livez_file=node.livez_file,
        pid_file=node.pid_file,
        fifo=node.fifo,
        log_file=node.log_file,
    )


def app_nodes(var: Path, ports: list[int]) -> list[AppNode]:
    """One node per configured port, numbered from 1."""
    return [AppNode(index, port, var) for index, port in enumerate(ports, start=1)]


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
