"""Small process and file helpers shared by the cluster modules."""

import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class ClusterError(Exception):
    """A failure worth showing to the user as-is (no traceback)."""


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
