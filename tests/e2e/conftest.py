"""A whole cluster of its own for end-to-end and fault tests, driven over HTTP.

The tests kill app nodes, stop databases and Redis, so they never touch the
developer's cluster: `python -m cluster up` runs with its own var directory
(var/e2e) and ports, wiped at the start of each session, and `down` runs at the
end even when a test failed.
"""

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from cluster.postgres import PostgresInstance
from cluster.util import pids_with_marker
from core import local_cluster
from tests.e2e.browser import browser, screenshots  # noqa: F401 (fixtures)
from tests.e2e.device_load import T0, DeviceRecord, batch_body, post_upload

E2E_VAR = local_cluster.REPO_ROOT / "var" / "e2e"
E2E_ENV = {
    "FLEET_VAR_DIR": str(E2E_VAR),
    # Every port above the kernel's ephemeral range (32768-60999): a server the tests
    # restart mid-suite (a node, a shard, Redis, HAProxy) must not find its port taken
    # as the local port of some outgoing connection, as a run of #18 saw. Poolers listen
    # 2000 above their PostgreSQL (63432-).
    "FLEET_DIRECTORY_PORT": "61432",
    "FLEET_SHARD_1_PORT": "61433",
    "FLEET_SHARD_2_PORT": "61434",
    "FLEET_REDIS_PORT": "61379",
    "FLEET_HTTP_PORT": "61000",
    "FLEET_STATS_PORT": "61404",
    "FLEET_APP_PORTS": "61001,61002",
    "FLEET_EXTRA_SHARD_PORT_BASE": "61435",
    # A tight pool in front of every database, so every e2e test also proves the project
    # works when clients queue for server connections (tests/e2e/test_pool.py).
    "FLEET_POOL_SIZE": "10",
    # A short cleanup grace, so moved devices' old rows go within seconds and the tests can
    # check they are stored on one shard only. Placements stay cached as long as in
    # production (30 s): reads and writes follow the fences, not the caches' age.
    "MOVE_CLEANUP_GRACE_SECONDS": "4",
}
DEVICES_PER_SHARD = 3
WARM_BATCH = -1


def _tail(output: bytes | str | None, chars: int = 4000) -> str:
    text = output.decode(errors="replace") if isinstance(output, bytes) else output or ""
    return text[-chars:]


@dataclass
class E2ECluster:
    env: dict[str, str]
    info: dict[str, Any]

    @property
    def url(self) -> str:
        return self.info["url"].rstrip("/")

    @property
    def var(self) -> Path:
        return Path(self.env["FLEET_VAR_DIR"])

    def tool(self, *args: str, timeout: float = 600) -> str:
        """Run `python -m cluster ARGS` against this cluster; fail with its output."""
        proc = subprocess.run(
            [sys.executable, "-m", "cluster", *args],
            cwd=local_cluster.REPO_ROOT, env=self.env, capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, f"cluster {args} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def up(self) -> None:
        self.tool("up")

    def reload_info(self) -> None:
        """Re-read var/e2e/cluster.json (add-shard adds a shard to it)."""
        self.info = json.loads((self.var / "cluster.json").read_text())

    def manage(self, *args: str, timeout: float = 600) -> str:
        """Run `manage.py ARGS` against this cluster, as its operator would; fail with output."""
        env = {**self.env, "DJANGO_SETTINGS_MODULE": "core.settings"}
        try:
            proc = subprocess.run(
                [sys.executable, "manage.py", *args],
                cwd=local_cluster.REPO_ROOT, env=env, capture_output=True, text=True,
                timeout=timeout, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(
                f"manage.py {args} still ran after {timeout:g} s:\n{_tail(exc.stdout)}\n"
                f"{_tail(exc.stderr)}\n{self._state_of_runs(env)}"
            ) from None
        assert proc.returncode == 0, f"manage.py {args} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def _state_of_runs(self, env: dict[str, str]) -> str:
        """What a hung rebalance or move was doing: the runs' and the jobs' own records."""
        shown = []
        for args in (("rebalance", "--status"), ("move_device", "--list")):
            proc = subprocess.run(
                [sys.executable, "manage.py", *args],
                cwd=local_cluster.REPO_ROOT, env=env, capture_output=True, text=True,
                timeout=60, check=False,
            )  # fmt: skip
            shown.append(f"$ manage.py {' '.join(args)}\n{proc.stdout}{proc.stderr}")
        return "\n".join(shown)

    def upload_bulk(self, device: DeviceRecord, batches: int, readings: int) -> None:
        """Give a device many readings, older than any load's (a rows-rebalance moves it;
        a move's copy takes a while)."""
        for batch in range(batches):
            start = T0 - timedelta(days=10 + batch)
            rows = [
                {"ts": (start + timedelta(seconds=i)).isoformat(), "metric": "bulk", "value": i}
                for i in range(readings)
            ]
            body = json.dumps({"batch_id": f"bulk-{batch}", "readings": rows}).encode()
            status, data, error = post_upload(self.url, device.token, body)
            assert status == 202, (status, data, error)
            device.extra_readings += readings

    def clean_up_old_copies(self) -> None:
        """Wait out the grace period, then remove moved devices' rows from their old shards."""
        time.sleep(float(self.env["MOVE_CLEANUP_GRACE_SECONDS"]) + 0.5)
        self.manage("move_device", "--cleanup")

    def pids(self, marker: str) -> list[int]:
        return pids_with_marker(marker)

    def kill(self, marker: str) -> list[int]:
        """SIGKILL every process whose command line names `marker` (a node and its workers)."""
        pids = self.pids(marker)
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def app_marker(self, n: int) -> str:
        return str(self.var / "run" / f"app-{n}.ini")

    def stats_csv(self) -> list[dict[str, str]]:
        import base64
        import http.client

        host, port = "127.0.0.1", int(self.env["FLEET_STATS_PORT"])
        auth = base64.b64encode(
            f"{self.info['stats_user']}:{self.info['stats_password']}".encode()
        ).decode()
        with closing(http.client.HTTPConnection(host, port, timeout=2)) as connection:
            connection.request("GET", "/;csv", headers={"Authorization": f"Basic {auth}"})
            text = connection.getresponse().read().decode()
        header, *rows = [line for line in text.splitlines() if line]
        names = header.lstrip("# ").split(",")
        return [dict(zip(names, row.split(","), strict=False)) for row in rows]

    def server_status(self, server: str) -> str:
        for row in self.stats_csv():
            if row.get("svname") == server:
                return row.get("status", "")
        return "missing"

    # Stored data, read from outside the application ----------------------------

    def connect(self, port: int, db: str):
        return psycopg2.connect(
            host="127.0.0.1", port=port, dbname=db,
            user=local_cluster.DB_USER, password=local_cluster.DB_PASSWORD, connect_timeout=5,
        )  # fmt: skip

    def directory(self, sql: str, params: list | None = None) -> list[tuple]:
        """Run one statement on the directory (committed); its rows, if it returns any."""
        directory = self.info["directory"]
        with closing(self.connect(directory["port"], directory["db"])) as conn:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                rows = cur.fetchall() if cur.description else []
            conn.commit()
        return rows

    def placements(self) -> dict[int, str]:
        return dict(self.directory("SELECT device_id, shard_id FROM core_placement"))

    def per_shard(self, sql: str) -> dict[str, list[tuple]]:
        rows = {}
        for alias, shard in self.info["shards"].items():
            with closing(self.connect(shard["port"], shard["db"])) as conn, conn.cursor() as cur:
                cur.execute(sql)
                rows[alias] = cur.fetchall()
        return rows

    def readings_by_device(self) -> dict[str, dict[int, int]]:
        sql = "SELECT device_id, count(*) FROM shards_reading GROUP BY device_id"
        return {alias: dict(rows) for alias, rows in self.per_shard(sql).items()}

    def staged_uploads(self) -> int:
        sql = "SELECT count(*) FROM shards_upload WHERE status = 'staged'"
        return sum(rows[0][0] for rows in self.per_shard(sql).values())

    def wait_all_imported(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while (staged := self.staged_uploads()) > 0:
            assert time.monotonic() < deadline, f"{staged} uploads still staged after {timeout}s"
            time.sleep(1)

    def assert_exactly_once(self, devices: list[DeviceRecord]) -> dict[str, int]:
        """Every acknowledged reading stored once, on the device's current shard only."""
        self.wait_all_imported()
        placement = self.placements()
        stored = self.readings_by_device()
        summary = {"acknowledged": 0, "stored": 0}
        for device in devices:
            home = placement[device.device_id]
            elsewhere = {a: c for a, c in stored.items() if a != home and c.get(device.device_id)}
            assert not elsewhere, f"device {device.device_id} has readings off {home}: {elsewhere}"
            count = stored[home].get(device.device_id, 0)
            assert count == device.readings_acknowledged, (device.device_id, count)
            summary["acknowledged"] += device.readings_acknowledged
            summary["stored"] += count
        return summary


class Browser:
    """A signed-in session (cookies and CSRF token) through HAProxy on `port`."""

    def __init__(self, port: int, username: str, password: str) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}
        _, page = self.request("GET", "/accounts/login/")
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page)[1].decode()
        form = f"username={username}&password={password}&csrfmiddlewaretoken={token}"
        status, _ = self.request(
            "POST", "/accounts/login/", form, {"Content-Type": "application/x-www-form-urlencoded"}
        )
        assert status == 302, "sign-in failed"

    def request(self, method: str, path: str, body: str = "", headers: dict | None = None):
        cookie = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        sent = {"Cookie": cookie, "Referer": f"http://127.0.0.1:{self.port}/", **(headers or {})}
        if "csrftoken" in self.cookies:
            sent["X-CSRFToken"] = self.cookies["csrftoken"]
        with closing(http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)) as connection:
            connection.request(method, path, body=body or None, headers=sent)
            response = connection.getresponse()
            for header in response.msg.get_all("Set-Cookie") or []:
                for name, morsel in SimpleCookie(header).items():
                    self.cookies[name] = morsel.value
            return response.status, response.read()


def report(capsys, message: str) -> None:
    """Measurements go to the terminal (and CI's log) even when the test passes."""
    with capsys.disabled():
        print(message, flush=True)


def wipe_previous_cluster(env: dict[str, str]) -> None:
    """Start every session from nothing, as CI's clean clone does: an earlier run's
    added, retired or half-drained shards would change what the tests see."""
    subprocess.run(
        [sys.executable, "-m", "cluster", "down"], cwd=local_cluster.REPO_ROOT, env=env,
        capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    var = Path(env["FLEET_VAR_DIR"])
    pg_root = var / "pg"
    if pg_root.is_dir():
        for data_dir in pg_root.iterdir():
            PostgresInstance(data_dir.name, 0, pg_root, var / "log").destroy()
    for leftover in ("pg", "redis", "run", "etcd", "patroni", "cluster.json", "extra_shards.json"):
        path = var / leftover
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@contextmanager
def fresh_cluster(settings: dict[str, str]) -> Iterator[E2ECluster]:
    """A cluster with `settings` (its var dir, ports, shape) made from nothing, taken
    down afterwards even when a test failed."""
    env = {**os.environ, **settings}
    cluster = E2ECluster(env=env, info={})
    wipe_previous_cluster(env)
    try:
        cluster.up()
        cluster.reload_info()
        yield cluster
    finally:
        subprocess.run(
            [sys.executable, "-m", "cluster", "down"], cwd=local_cluster.REPO_ROOT, env=env,
            capture_output=True, timeout=300, check=False,
        )  # fmt: skip


@pytest.fixture(scope="session")
def e2e_cluster() -> Iterator[E2ECluster]:
    with fresh_cluster(E2E_ENV) as cluster:
        yield cluster


def enroll(cluster: E2ECluster, serial: str) -> DeviceRecord:
    import http.client

    body = json.dumps({"provisioning_key": cluster.info["provisioning_key"], "serial": serial})
    port = int(cluster.env["FLEET_HTTP_PORT"])
    with closing(http.client.HTTPConnection("127.0.0.1", port, timeout=10)) as connection:
        connection.request(
            "POST", "/api/v1/device/enroll", body=body, headers={"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        data = json.loads(response.read())
    assert response.status == 201, data
    return DeviceRecord(device_id=data["device_id"], token=data["token"])


def enroll_fleet(cluster: E2ECluster, prefix: str, count: int) -> list[DeviceRecord]:
    """Enrol devices and send one acknowledged batch each (numbered -1), so tokens and
    placements are cached."""
    devices = [enroll(cluster, f"{prefix}-{i}") for i in range(count)]
    for device in devices:
        status, data, error = post_upload(
            cluster.url, device.token, batch_body(device.device_id, WARM_BATCH)
        )
        assert status == 202, (status, data, error)
        device.acknowledged[WARM_BATCH] = data["upload_id"]
    return devices


@pytest.fixture
def fleet(e2e_cluster: E2ECluster, request) -> dict[str, list[DeviceRecord]]:
    """Freshly enrolled devices, grouped by the shard they landed on (both shards used)."""
    prefix = f"{request.node.name[:40]}-{time.time_ns()}"
    devices = enroll_fleet(e2e_cluster, prefix, 2 * DEVICES_PER_SHARD)
    placement = e2e_cluster.placements()
    by_shard: dict[str, list[DeviceRecord]] = {}
    for device in devices:
        by_shard.setdefault(placement[device.device_id], []).append(device)
    assert len(by_shard) >= 2, f"devices did not spread over the shards: {by_shard.keys()}"
    return by_shard
