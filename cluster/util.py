"""Small process and file helpers shared by the cluster modules."""

import base64
import contextlib
import http.client
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path


class ClusterError(Exception):
    """A failure worth showing to the user as-is (no traceback)."""


def system_binary(name: str, sbin: bool = True) -> str:
    """A Debian package's program: on PATH, else where Debian installs it."""
    found = shutil.which(name) or f"/usr/{'sbin' if sbin else 'bin'}/{name}"
    if not Path(found).exists():
        raise ClusterError(f"{name} not found; run bin/bootstrap (installs Debian's packages)")
    return found


def tail(path: Path, lines: int = 30) -> str:
    """Last `lines` lines of a log file, or a note when it cannot be read."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def run(
    args: Sequence[str],
    *,
    what: str,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    input_text: str | None = None,
    timeout: float = 120,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command capturing its output; on failure raise ClusterError saying `what` failed."""
    try:
        proc = subprocess.run(
            list(args),
            env=env,
            cwd=cwd,
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ClusterError(f"{what}: command not found: {args[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"{what}: timed out after {timeout:.0f}s") from exc
    if check and proc.returncode != 0:
        output = (proc.stderr or "") + (proc.stdout or "")
        raise ClusterError(f"{what} failed (exit {proc.returncode}):\n{output.strip()}")
    return proc


def pid_alive(pid: int, name_hint: str | None = None) -> bool:
    """True if process `pid` exists (and, when given, its command mentions `name_hint`).

    The name check guards against a stale pid file whose pid was reused by an
    unrelated process, so we never report or signal the wrong thing.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if name_hint is None:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return True  # no /proc: trust kill(0)
    return name_hint.encode() in cmdline


def read_pid(path: Path) -> int | None:
    """First line of a pid file as an int, or None if absent or garbled."""
    try:
        first = path.read_text().splitlines()[0]
        return int(first.strip())
    except (OSError, IndexError, ValueError):
        return None


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    """Poll `predicate` until it is truthy or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def http_get(
    url: str, *, auth: tuple[str, str] | None = None, timeout: float = 2.0
) -> tuple[int, bytes]:
    """(status, body) of a GET; status 0 when nothing answered. Standard library only."""
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, http.client.HTTPException):
        return 0, b""


def _arguments(pid: int) -> list[bytes] | None:
    """The command-line arguments of `pid`, or None when it is gone (zombies have none)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.split(b"\0")[:-1] if raw else None


def runs_with_arg(pid: int, arg: str) -> bool:
    """True if process `pid` is alive and `arg` is one of its command-line arguments.

    A whole argument, not a substring: /srv/a/checkout/var/run/app-1.ini must not match
    a marker /a/checkout/var/run/app-1.ini of another checkout.
    """
    arguments = _arguments(pid)
    return arguments is not None and arg.encode() in arguments


def own_pid(pid_file: Path, marker: str) -> int | None:
    """The pid in `pid_file` if that process is alive and has `marker` (a path of this
    checkout) among its arguments: ours, not a stale file's reused pid."""
    pid = read_pid(pid_file)
    return pid if pid is not None and runs_with_arg(pid, marker) else None


def pids_with_marker(arg: str) -> list[int]:
    """Live processes with the marker `arg` (a config path under var/) as an argument.

    Finds what a pid file no longer names: uWSGI workers orphaned by a killed master,
    prefork children of a Celery worker. The arg is an absolute path inside this
    checkout's var/, so processes of other checkouts or of the system never match.
    """
    pids = (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return sorted(pid for pid in pids if pid != os.getpid() and runs_with_arg(pid, arg))


def exited(pid: int) -> bool:
    """True once `pid` is gone or a zombie.

    Not the same as losing its command line: the kernel frees a process's memory (and so
    its cmdline) before it closes its files, so a listening socket can outlive the cmdline.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def terminate(pids: Sequence[int], timeout: float, arg: str) -> list[int]:
    """SIGTERM `pids`, wait up to `timeout`, SIGKILL what is left. Returns the pids still alive.

    Only pids that still have `arg` on their command line are signalled, so a pid reused
    by an unrelated process is left alone; those are then waited for until they have
    fully exited (sockets closed), not just until their command line is gone.
    """
    ours = [pid for pid in pids if runs_with_arg(pid, arg)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ours:
            if not exited(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        if wait_for(lambda: all(exited(pid) for pid in ours), timeout=timeout):
            return []
    return [pid for pid in ours if not exited(pid)]


def stop_process(pid: int | None, pid_file: Path, marker: str, what: str, timeout: float) -> bool:
    """Stop our process `pid` (SIGTERM, then SIGKILL after `timeout`; only if `marker` is
    still on its command line) and remove its pid file. True if it was running."""
    if pid is None:
        return False
    if terminate([pid], timeout, marker):
        raise ClusterError(f"{what}: pid {pid} did not exit")
    pid_file.unlink(missing_ok=True)
    return True
