"""One loopback PostgreSQL instance with its own data directory, built on Debian's binaries.

Used by `python -m cluster up` for the directory and shard databases, and by the test
harness for extra throw-away shards:

    inst = PostgresInstance(name="shard_3", port=55499, root=Path("var/test/pg"),
                            log_dir=Path("var/test/log"))
    inst.ensure_running()
    inst.create_database("fleet_shard_3")
    ...
    inst.destroy()

PostgreSQL refuses to run as root. When we are root every server-side command
(initdb, pg_ctl) runs as the ``postgres`` OS user via runuser, and the data directory
and log file belong to that user. If the postgres user cannot reach ``root`` or
``log_dir`` (a repo under /root, mode 700), the directory is replaced by a symlink
into a postgres-owned fallback under that user's home, see `fallback_dir_for`.
"""

import hashlib
import os
import pwd
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cluster.ports import port_in_use
from cluster.util import ClusterError, pid_alive, run, tail, wait_for
from core.local_cluster import DB_PASSWORD, DB_USER, HOST

PG_LIB = Path("/usr/lib/postgresql")
PG_OS_USER = "postgres"
START_TIMEOUT = 60

# Server settings passed on the pg_ctl command line, so nothing in the data dir's
# postgresql.conf needs editing and a port change only needs a restart.
SERVER_SETTINGS: dict[str, str] = {
    "unix_socket_directories": "''",
    "max_connections": "200",
    "shared_buffers": "128MB",
    "fsync": "on",
}


def find_bin_dir() -> Path:
    """Directory of the newest installed PostgreSQL server binaries.

    Debian keeps initdb/pg_ctl out of PATH under /usr/lib/postgresql/<major>/bin;
    FLEET_PG_BIN overrides the choice.
    """
    override = os.environ.get("FLEET_PG_BIN")
    if override:
        return Path(override)
    candidates = []
    if PG_LIB.is_dir():
        for entry in PG_LIB.iterdir():
            if (entry / "bin" / "initdb").exists():
                try:
                    version = tuple(int(part) for part in entry.name.split("."))
                except ValueError:
                    continue
                candidates.append((version, entry / "bin"))
    if candidates:
        return max(candidates)[1]
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise ClusterError(
        "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin; "
        "run bin/bootstrap (installs Debian's postgresql package)"
    )


def running_as_root() -> bool:
    return os.geteuid() == 0


def postgres_account() -> pwd.struct_passwd:
    """The OS account servers run as when we are root."""
    try:
        return pwd.getpwnam(PG_OS_USER)
    except KeyError:
        raise ClusterError(
            f"running as root, but there is no {PG_OS_USER!r} OS user to run PostgreSQL as; "
            "run bin/bootstrap (installs Debian's postgresql package)"
        ) from None


def as_server_user(args: Sequence[str]) -> list[str]:
    """Prefix a command so it runs as the postgres user when we are root."""
    if running_as_root():
        postgres_account()
        return ["runuser", "-u", PG_OS_USER, "--", *args]
    return list(args)


def give_to_server_user(path: Path) -> None:
    """chown `path` to the postgres user (no-op unless we are root)."""
    if running_as_root():
        account = postgres_account()
        os.chown(path, account.pw_uid, account.pw_gid)


def server_user_can_reach(path: Path) -> bool:
    """Whether the postgres user can traverse into `path` (or its nearest existing ancestor)."""
    if not running_as_root():
        return True
    probe = Path(os.path.realpath(path))
    while not probe.exists():
        probe = probe.parent
    proc = run(
        as_server_user(["test", "-x", str(probe)]), what="access check", cwd="/", check=False
    )
    return proc.returncode == 0


def fallback_dir_for(path: Path) -> Path:
    """Postgres-owned stand-in for a directory the postgres user cannot reach.

    Named after a hash of the parent's absolute path, so var/pg and var/log of one
    checkout share ``~postgres/fleet-<sha>/`` and different checkouts never collide.
    """
    parent = Path(os.path.realpath(path.absolute().parent))
    digest = hashlib.sha256(str(parent).encode()).hexdigest()[:12]
    return Path(postgres_account().pw_dir) / f"fleet-{digest}" / path.name


def _makedirs(path: Path, mode: int) -> None:
    """mkdir -p that sets `mode` on each directory it creates, whatever the umask."""
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        directory.chmod(mode)


def prepare_server_dir(path: Path) -> Path:
    """Make sure `path` exists and the server user can reach it; return its real location.

    As root, when the checkout is not reachable by the postgres user, `path` becomes a
    symlink into `fallback_dir_for(path)` (moving over anything already in it).
    """
    if path.is_symlink():
        target = Path(os.path.realpath(path))
        if not target.exists():  # e.g. the fallback was cleaned up behind our back
            _makedirs(target, 0o750)
            give_to_server_user(target)
            give_to_server_user(target.parent)
        return target
    if server_user_can_reach(path):
        _makedirs(path, 0o755)
        return Path(os.path.realpath(path))
    fallback = fallback_dir_for(path)
    _makedirs(fallback, 0o750)
    give_to_server_user(fallback.parent)
    give_to_server_user(fallback)
    if path.is_dir():
        for child in path.iterdir():
            shutil.move(str(child), str(fallback / child.name))
        path.rmdir()
    _makedirs(path.parent, 0o755)
    path.symlink_to(fallback, target_is_directory=True)
    print(f"  {path} -> {fallback} (the postgres user cannot reach this checkout)")
    return fallback


class PostgresInstance:
    """A PostgreSQL server owning ``root/<name>`` and listening on ``host:port`` only.

    All methods are idempotent: ensure_running() on a running instance, stop() on a
    stopped one, create_database() for an existing database are no-ops.
    """

    def __init__(
        self,
        name: str,
        port: int,
        root: Path,
        log_dir: Path,
        *,
        host: str = HOST,
        user: str = DB_USER,
        password: str = DB_PASSWORD,
        port_env: str | None = None,
        bin_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.root = Path(root).absolute()
        self.log_dir = Path(log_dir).absolute()
        self.host = host
        self.user = user
        self.password = password
        self.port_env = port_env
        self._bin_dir = bin_dir

    def __repr__(self) -> str:
        return f"PostgresInstance(name={self.name!r}, port={self.port}, data_dir={self.data_dir})"

    # -- locations ---------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self.root / self.name

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = find_bin_dir()
        return self._bin_dir

    def _bin(self, program: str) -> str:
        return str(self.bin_dir / program)

    def _real_data_dir(self) -> str:
        # The server user may not be able to follow our symlinks; hand it real paths.
        return os.path.realpath(self.data_dir)

    def url(self, dbname: str) -> str:
        """A postgres:// URL for `dbname` on this instance (for DATABASE_URL-style settings)."""
        return f"postgres://{self.user}:{self.password}@{self.host}:{self.port}/{dbname}"

    # -- state -------------------------------------------------------------------

    def _postmaster_pid_lines(self) -> list[str]:
        try:
            return (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return []

    def pid(self) -> int | None:
        """Postmaster pid from our data dir's postmaster.pid, if that process is alive."""
        lines = self._postmaster_pid_lines()
        try:
            pid = int(lines[0])
        except (IndexError, ValueError):
            return None
        return pid if pid_alive(pid, "postgres") else None

    def running_port(self) -> int | None:
        """Port the running postmaster listens on (line 4 of postmaster.pid)."""
        if self.pid() is None:
            return None
        try:
            return int(self._postmaster_pid_lines()[3])
        except (IndexError, ValueError):
            return None

    def is_running(self) -> bool:
        return self.pid() is not None

    def is_ready(self) -> bool:
        """Whether the server accepts connections over TCP (pg_isready)."""
        proc = run(
            [
                self._bin("pg_isready"),
                *("-h", self.host, "-p", str(self.port)),
                *("-U", self.user, "-d", "postgres", "-t", "3"),
            ],
            what="pg_isready",
            check=False,
            timeout=10,
        )
        return proc.returncode == 0

    # -- lifecycle ---------------------------------------------------------------

    def ensure_running(self) -> bool:
        """initdb if needed, start and wait until ready. Returns True if it started it now."""
        if self.is_running():
            running_port = self.running_port()
            if running_port is not None and running_port != self.port:
                raise ClusterError(
                    f"{self.name}: already running from {self.data_dir} on port {running_port}, "
                    f"but configured for port {self.port}; run `python -m cluster down` first"
                )
            # It may still be starting (e.g. an earlier `up` was interrupted): wait for it.
            if not wait_for(self.is_ready, timeout=START_TIMEOUT, interval=0.5):
                raise ClusterError(
                    f"{self.name}: pid {self.pid()} runs from {self.data_dir} but does not accept "
                    f"connections on port {self.port}. Last lines of {self.log_file}:\n"
                    f"{tail(self.log_file)}"
                )
            return False
        if port_in_use(self.port, self.host):
            moved_by = f" (set {self.port_env} to use another port)" if self.port_env else ""
            raise ClusterError(
                f"{self.name}: port {self.port} on {self.host} is taken by something that is "
                f"not this cluster's PostgreSQL{moved_by}"
            )
        prepare_server_dir(self.root)
        prepare_server_dir(self.log_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._start()
        return True

    def _fresh_data_dir(self) -> Path:
        """An empty data dir owned by the server user; clears an interrupted initdb."""
        data = Path(self._real_data_dir())
        if data.exists():
            shutil.rmtree(data)
        data.mkdir(mode=0o700)
        give_to_server_user(data)
        return data

    def _initdb(self) -> None:
        fd, pwfile = tempfile.mkstemp(prefix="fleet-pw-")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(self.password + "\n")
            give_to_server_user(Path(pwfile))
            errors = []
            for locale in ("C.UTF-8", "C"):
                data = self._fresh_data_dir()
                args = [
                    self._bin("initdb"),
                    *("-D", str(data), "-U", self.user),
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    *("-E", "UTF8", f"--locale={locale}"),
                ]
                proc = run(as_server_user(args), what="initdb", cwd="/", check=False)
                if proc.returncode == 0:
                    return
                errors.append(f"--locale={locale}: {(proc.stderr or proc.stdout).strip()}")
            raise ClusterError(f"{self.name}: initdb failed:\n" + "\n".join(errors))
        finally:
            os.unlink(pwfile)

    def _start(self) -> None:
        log_file = Path(os.path.realpath(self.log_file))
        log_file.touch(exist_ok=True)
        give_to_server_user(log_file)
        settings = {"port": str(self.port), "listen_addresses": self.host, **SERVER_SETTINGS}
        options = " ".join(f"-c {key}={value}" for key, value in settings.items())
        args = [
            self._bin("pg_ctl"),
            *("-D", self._real_data_dir(), "-l", str(log_file)),
            *("-w", "-t", str(START_TIMEOUT), "-o", options, "start"),
        ]
        proc = run(
            as_server_user(args),
            what="pg_ctl start",
            cwd="/",
            check=False,
            timeout=START_TIMEOUT + 30,
        )
        if proc.returncode != 0:
            raise ClusterError(
                f"{self.name}: PostgreSQL did not start on port {self.port} "
                f"(pg_ctl exit {proc.returncode}). Last lines of {self.log_file}:\n"
                f"{tail(self.log_file)}"
            )

    def stop(self) -> bool:
        """Fast shutdown (rolls back open transactions). Returns True if it was running."""
        if not self.is_running():
            return False
        args = [self._bin("pg_ctl"), "-D", self._real_data_dir(), "-m", "fast", "-w", "-t", "60"]
        run(as_server_user([*args, "stop"]), what=f"{self.name}: pg_ctl stop", cwd="/", timeout=90)
        return True

    def destroy(self) -> None:
        """Stop the server and delete its data directory (the log file is kept)."""
        self.stop()
        shutil.rmtree(self._real_data_dir(), ignore_errors=True)
        if self.data_dir.is_symlink():
            self.data_dir.unlink()

    # -- SQL ---------------------------------------------------------------------

    def psql(
        self, sql: str, dbname: str = "postgres", variables: dict[str, str] | None = None
    ) -> str:
        """Run SQL (psql script syntax, :'var' interpolation) over TCP as the DB user."""
        env = {**os.environ, "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "10"}
        args = [
            self._bin("psql"),
            "-X",
            *("-v", "ON_ERROR_STOP=1"),
            *("-h", self.host, "-p", str(self.port), "-U", self.user, "-d", dbname),
        ]
        for key, value in (variables or {}).items():
            args += ["-v", f"{key}={value}"]
        proc = run(args, what=f"{self.name}: psql", env=env, input_text=sql, timeout=60)
        return proc.stdout

    def create_database(self, dbname: str) -> bool:
        """Create `dbname` unless it exists. Returns True if it was created now."""
        # The server quotes the identifier (format %I), so any name is safe.
        sql = (
            "SELECT format('CREATE DATABASE %I', :'dbname')\n"
            "WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'dbname') \\gexec\n"
        )
        output = self.psql(sql, variables={"dbname": dbname})
        return "CREATE DATABASE" in output
