"""Test hosts on this machine: one network namespace, root file system and sshd each.

Each host is what tests/hosts/make-base.sh builds (Debian minbase plus the packages
the Ansible roles install) under an overlay of its own, in a network namespace joined
to the bridge `fleetbr0` (10.200.0.1/24 on the control side) by a veth pair, with its
own mount, PID and UTS namespaces and sshd as PID 1. Ansible reaches it over SSH as
root with a key made for these hosts only.

All names carry the `fleet-` prefix and only 10.200.0.0/24 is used, so nothing
else on the machine is touched. The overlay and /proc, /dev mounts live in the
host's private mount namespace and vanish with its processes; `destroy()` kills
exactly the processes in our namespaces, deletes the links and namespaces and
the overlay's upper layer, and is safe to call twice or after a failed start.
"""

import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAKE_BASE = HERE / "make-base.sh"
ROOT = Path(os.environ.get("FLEET_HOSTS_DIR", "/var/tmp/fleet-hosts"))
BRIDGE = "fleetbr0"
SUBNET = "10.200.0"
CONTROL_ADDRESS = f"{SUBNET}.1"
NS_PREFIX = "fleet-h"
BASE_TIMEOUT = 900


class HostsUnavailable(Exception):
    """This machine cannot make test hosts (not root, no namespaces, no debootstrap)."""


def sh(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def why_unavailable() -> str | None:
    """None when test hosts can be made here; otherwise the reason, for a skip message."""
    if os.geteuid() != 0:
        return "test hosts need root (network namespaces, mounts, chroot)"
    for tool in ("ip", "unshare", "chroot", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    if shutil.which("debootstrap") is None and not base_dir().joinpath(".complete").exists():
        return "debootstrap is not installed (bin/bootstrap installs it)"
    probe = f"{NS_PREFIX}probe{os.getpid()}"
    proc = sh("ip", "netns", "add", probe, check=False)
    if proc.returncode != 0:
        return f"cannot create a network namespace here: {proc.stderr.strip()}"
    sh("ip", "netns", "del", probe, check=False)
    proc = sh(
        "unshare", "--mount", "--pid", "--uts", "--fork", "true", check=False
    )  # fmt: skip
    if proc.returncode != 0:
        return f"cannot create mount/PID/UTS namespaces here: {proc.stderr.strip()}"
    return None


def base_dir() -> Path:
    """The base root file system, keyed by the script that builds it."""
    key = hashlib.sha256(MAKE_BASE.read_bytes()).hexdigest()[:12]
    return ROOT / f"base-{key}"


def ensure_base() -> Path:
    """Build the base once (about 90 s); later runs reuse it."""
    base = base_dir()
    if not (base / ".complete").exists():
        with locked(ROOT / "base.lock"):
            proc = subprocess.run(
                [str(MAKE_BASE), str(base)], capture_output=True, text=True,
                timeout=BASE_TIMEOUT, check=False,
            )  # fmt: skip
            if proc.returncode != 0:
                raise RuntimeError(f"make-base.sh failed:\n{proc.stdout}\n{proc.stderr}")
            # Bases of earlier versions of make-base.sh are not used any more.
            for old in ROOT.glob("base-*"):
                if old.is_dir() and old != base and not old.name.endswith(".tmp"):
                    shutil.rmtree(old, ignore_errors=True)
    return base


@contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ssh_key() -> Path:
    """The control node's key for the test hosts (made once, used for nothing else)."""
    key = ROOT / "ssh" / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleet-test-hosts", "-f", str(key))
    return key


@dataclass
class Host:
    name: str  # h1, h2, ...
    index: int
    base: Path
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def netns(self) -> str:
        return f"{NS_PREFIX}{self.index}"

    @property
    def address(self) -> str:
        return f"{SUBNET}.{10 + self.index}"

    @property
    def veth(self) -> str:
        return f"fleet-v{self.index}"

    @property
    def peer(self) -> str:
        return f"fleet-e{self.index}"

    @property
    def dir(self) -> Path:
        return ROOT / "hosts" / self.name

    def start(self, public_key: str) -> None:
        upper, work, root = self.dir / "upper", self.dir / "work", self.dir / "root"
        shutil.rmtree(self.dir, ignore_errors=True)
        for path in (upper, work, root):
            path.mkdir(parents=True)
        # Written to the upper layer: the host sees them, the base stays untouched.
        ssh_dir = upper / "root" / ".ssh"
        ssh_dir.mkdir(parents=True, mode=0o700)
        (ssh_dir / "authorized_keys").write_text(public_key)
        (ssh_dir / "authorized_keys").chmod(0o600)
        (upper / "etc").mkdir(exist_ok=True)
        (upper / "etc" / "hostname").write_text(f"{self.name}\n")
        (upper / "etc" / "hosts").write_text(f"127.0.0.1 localhost\n{self.address} {self.name}\n")

        sh("ip", "netns", "add", self.netns)
        sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", self.peer)
        sh("ip", "link", "set", self.peer, "netns", self.netns)
        sh("ip", "link", "set", self.veth, "master", BRIDGE)
        sh("ip", "link", "set", self.veth, "up")
        inside = ("ip", "netns", "exec", self.netns)
        sh(*inside, "ip", "link", "set", self.peer, "name", "eth0")
        sh(*inside, "ip", "addr", "add", f"{self.address}/24", "dev", "eth0")
        sh(*inside, "ip", "link", "set", "eth0", "up")
        sh(*inside, "ip", "link", "set", "lo", "up")
        sh(*inside, "ip", "route", "add", "default", "via", CONTROL_ADDRESS)

        # Everything mounted here is in the host's private mount namespace.
        script = f"""
set -e
hostname {self.name}
mount -t overlay overlay -o lowerdir={self.base},upperdir={upper},workdir={work} {root}
mount -t proc proc {root}/proc
mount --rbind /dev {root}/dev
mount -t tmpfs -o mode=1777 tmpfs {root}/dev/shm
mount -t tmpfs -o mode=755 tmpfs {root}/run
mkdir -p {root}/run/sshd
chroot {root} ssh-keygen -A >/dev/null
exec chroot {root} /usr/sbin/sshd -D -e
"""
        log = open(self.dir / "sshd.log", "w")  # noqa: SIM115 (kept by the process)
        self.process = subprocess.Popen(
            [*inside, "unshare", "--mount", "--pid", "--uts", "--fork", "sh", "-c", script],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip

    def wait_ssh(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name}: sshd exited:\n{(self.dir / 'sshd.log').read_text()}"
                )
            with suppress(OSError), socket.create_connection((self.address, 22), timeout=1):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name}: no sshd on {self.address}:22 after {timeout}s")

    def pids(self) -> list[int]:
        proc = sh("ip", "netns", "pids", self.netns, check=False)
        return [int(p) for p in proc.stdout.split()] if proc.returncode == 0 else []

    def destroy(self) -> None:
        for _ in range(50):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        if self.process is not None:
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        sh("ip", "link", "del", self.veth, check=False)
        sh("ip", "netns", "del", self.netns, check=False)
        # The mounts died with the namespace; only the layers remain.
        shutil.rmtree(self.dir, ignore_errors=True)


class TestHosts:
    """`count` hosts h1..hN at 10.200.0.11.. on fleetbr0; a context manager."""

    __test__ = False  # not a pytest test class

    def __init__(self, count: int):
        self.base = ensure_base()
        self.key = ssh_key()
        self.hosts = [Host(f"h{i}", i, self.base) for i in range(1, count + 1)]
        self._lock = None

    def __enter__(self) -> "TestHosts":
        # One set of test hosts per machine at a time: names and addresses are fixed.
        self._lock = open(ROOT / "hosts.lock", "w")  # held until __exit__
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            self._clean_leftovers()
            sh("ip", "link", "add", BRIDGE, "type", "bridge")
            sh("ip", "addr", "add", f"{CONTROL_ADDRESS}/24", "dev", BRIDGE)
            sh("ip", "link", "set", BRIDGE, "up")
            public_key = self.key.with_suffix(".pub").read_text()
            for host in self.hosts:
                host.start(public_key)
            for host in self.hosts:
                host.wait_ssh()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def _clean_leftovers(self) -> None:
        """An earlier run killed before its teardown: remove its (our) namespaces."""
        listed = sh("ip", "netns", "list", check=False).stdout.split("\n")
        for line in listed:
            name = line.split(" ")[0]
            if name.startswith(NS_PREFIX) and name[len(NS_PREFIX) :].isdigit():
                Host(f"h{name[len(NS_PREFIX) :]}", int(name[len(NS_PREFIX) :]), self.base).destroy()
        sh("ip", "link", "del", BRIDGE, check=False)

    def destroy(self) -> None:
        for host in self.hosts:
            host.destroy()
        sh("ip", "link", "del", BRIDGE, check=False)
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def ssh(self, host: Host, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ssh", *self.ssh_options(), f"root@{host.address}", command],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def ssh_options(self) -> list[str]:
        return [
            *("-i", str(self.key)),
            *("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"),
            *("-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"),
        ]
