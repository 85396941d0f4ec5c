"""A real Celery worker process for tests: prefork, the test broker, the test databases.

Eager mode would run tasks inside the test's own transaction and process, which
hides exactly what ingest must survive: tasks that run after commit, in another
process, and workers that die mid-task. The worker reads the shard registry from
the test directory lazily, so it may start before a test registers the shards.
"""

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings

from core import local_cluster
from tests.process_env import child_process_env

CELERY = local_cluster.REPO_ROOT / ".venv" / "bin" / "celery"
LOG_PATH = local_cluster.VAR_DIR / "log" / "test-worker.log"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


def purge_broker() -> None:
    """Drop every queued and unacknowledged message of the test broker (its own Redis db)."""
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()


class CeleryWorker:
    """One `celery worker` process group; start, stop, kill -9 and restart it."""

    def __init__(self, log_path: Path = LOG_PATH, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the worker and wait until it consumes from the queue."""
        assert not self.running, "worker already running"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        command = [
            str(CELERY), "-A", "core", "worker", "--pool=prefork", "--concurrency=2",
            "-Q", "fleet", "--loglevel=INFO", "--hostname=test-worker@%h",
            f"--logfile={self.log_path}", "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        # Its own process group, so kill() takes the pool children down with the parent.
        self.process = subprocess.Popen(
            command,
            cwd=local_cluster.REPO_ROOT,
            env={**child_process_env(), **self.env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._log_since(offset).count(" ready."):
            if self.process.poll() is not None:
                raise RuntimeError(f"celery worker exited at start; see {self.log_path}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"celery worker not ready in {READY_TIMEOUT}s: {self.log_path}")
            time.sleep(0.1)

    def _log_since(self, offset: int) -> str:
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def stop(self) -> None:
        """Warm shutdown (SIGTERM: running tasks finish), then SIGKILL if it hangs."""
        if not self.running:
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
        else:
            self._kill_group()  # pool children that outlived the parent, if any

    def kill(self) -> None:
        """kill -9 the whole worker, as a crashed machine would: no task gets to finish."""
        if self.process is None:
            return
        self._kill_group()
        self.process.wait(timeout=STOP_TIMEOUT)

    def _kill_group(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def celery_worker(django_db_setup, django_db_blocker) -> Iterator[CeleryWorker]:
    """A running worker for the session; stopped before the test databases are dropped."""
    with django_db_blocker.unblock():
        purge_broker()
        worker = CeleryWorker()
        worker.start()
        try:
            yield worker
        finally:
            worker.stop()
