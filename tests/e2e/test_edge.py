"""The edge under abuse: real HAProxy in front of real uWSGI nodes (the e2e cluster).

- A flood of big uploads at a concurrency above the nodes' threads: HAProxy's health
  checks must never fail (they used to wait in uWSGI's listen queue behind the uploads,
  and HAProxy took both nodes out: 503 "No server is available").
- Slow clients that dribble their bodies, more of them than the nodes have threads,
  while devices upload: they must hold no uWSGI thread (HAProxy buffers the whole
  request and cuts them with 408 after `timeout http-request`), so no node goes DOWN
  and no device sees a failure.
- A body over the upload limit is refused by HAProxy with 413 (JSON, like the app's
  errors) before a byte of it is read; a node reached directly drops it unread too.

Each test prints what it measured and checks every acknowledged reading is stored once.
"""

import contextlib
import json
import re
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from cluster.appnodes import THREADS_PER_WORKER, default_processes
from cluster.limits import upload_max_bytes
from core import local_cluster
from tests.e2e.conftest import E2E_ENV, E2E_VAR, E2ECluster, enroll_fleet, report
from tests.e2e.device_load import DeviceLoad, DeviceRecord, post_upload

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NODES = ("app-1", "app-2")
HOST = local_cluster.HOST
HTTP_PORT = int(E2E_ENV["FLEET_HTTP_PORT"])
# The e2e cluster's processes run with the settings this process reads.
UPLOAD_MAX_BYTES = upload_max_bytes()
NO_SERVER = b"No server is available"


def request_timeout() -> float:
    """HAProxy's `timeout http-request`: the whole request, body included, must arrive in it."""
    cfg = (E2E_VAR / "run" / "haproxy.cfg").read_text()
    return float(re.search(r"timeout http-request (\d+)s", cfg).group(1))


# -- HAProxy's view of the nodes ---------------------------------------------------


@dataclass
class NodeWatch:
    """Polls HAProxy's stats CSV: every status seen per node and the failed checks."""

    cluster: E2ECluster
    seen: dict[str, set[str]] = field(default_factory=lambda: {n: set() for n in NODES})
    failed_checks_before: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def rows(self) -> dict[str, dict[str, str]]:
        return {
            row["svname"]: row
            for row in self.cluster.stats_csv()
            if row.get("pxname") == "app_nodes" and row.get("svname") in NODES
        }

    def start(self) -> "NodeWatch":
        self.failed_checks_before = {n: int(r["chkfail"] or 0) for n, r in self.rows().items()}
        self._thread = threading.Thread(target=self._run, name="node-watch")
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, row in self.rows().items():
                self.seen[name].add(row["status"])
            time.sleep(0.1)

    def stop(self) -> dict[str, int]:
        """Failed checks per node since start()."""
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        return {
            name: int(row["chkfail"] or 0) - self.failed_checks_before[name]
            for name, row in self.rows().items()
        }

    def never_left_up(self) -> bool:
        return all(statuses == {"UP"} for statuses in self.seen.values())


# -- a flood of big uploads ----------------------------------------------------------


FLOOD_DEVICES = 32
FLOOD_READINGS = 1000
FLOOD_SECONDS = 12.0
FLOOD_T0 = datetime(2026, 7, 1, tzinfo=UTC)


def flood_body(device_id: int, batch: int) -> bytes:
    start = FLOOD_T0 + timedelta(seconds=batch * FLOOD_READINGS)
    readings = [
        {"ts": (start + timedelta(seconds=i)).isoformat(), "metric": "flood", "value": float(i)}
        for i in range(FLOOD_READINGS)
    ]
    return json.dumps({"batch_id": f"flood-{device_id}-{batch}", "readings": readings}).encode()


@dataclass
class Flood:
    """Each device sends big batches back to back, resending a batch until acknowledged."""

    url: str
    devices: list[DeviceRecord]
    statuses: dict[object, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, seconds: float) -> None:
        stop_at = time.monotonic() + seconds
        threads = [
            threading.Thread(target=self._device, args=(device, stop_at)) for device in self.devices
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _device(self, device: DeviceRecord, stop_at: float) -> None:
        batch = 0
        while time.monotonic() < stop_at:
            body = flood_body(device.device_id, batch)
            for _ in range(50):  # a batch is resent until acknowledged, as devices do
                status, data, _ = post_upload(self.url, device.token, body)
                no_server = status == 503 and NO_SERVER in data.get("raw", "").encode()
                key = "503 No server is available" if no_server else status
                with self._lock:
                    self.statuses[key] = self.statuses.get(key, 0) + 1
                if status == 202:
                    device.extra_readings += FLOOD_READINGS
                    break
                time.sleep(0.2)
            batch += 1


def test_health_checks_never_fail_under_a_flood_of_big_uploads(e2e_cluster: E2ECluster, capsys):
    devices = enroll_fleet(e2e_cluster, f"flood-{time.time_ns()}", FLOOD_DEVICES)
    watch = NodeWatch(e2e_cluster).start()
    flood = Flood(e2e_cluster.url, devices)
    try:
        flood.run(FLOOD_SECONDS)
    finally:
        failed_checks = watch.stop()
    summary = e2e_cluster.assert_exactly_once(devices)
    report(
        capsys,
        f"\nflood: {FLOOD_DEVICES} devices x {FLOOD_READINGS}-reading batches for"
        f" {FLOOD_SECONDS:.0f}s: answers {flood.statuses}; failed health checks {failed_checks};"
        f" statuses seen {watch.seen}; {summary}",
    )
    assert flood.statuses.get(202, 0) > FLOOD_DEVICES, flood.statuses
    assert set(flood.statuses) == {202}, flood.statuses
    assert failed_checks == {name: 0 for name in NODES}
    assert watch.never_left_up(), watch.seen


# -- slow bodies ------------------------------------------------------------------------


# More than both nodes' threads together (one worker process per core, 4 threads each).
SLOW_CLIENTS = len(NODES) * default_processes() * THREADS_PER_WORKER + 8
SLOW_BODY_BYTES = 50_000  # well under the upload limit
SLOW_GRACE = 5.0  # seconds the slow clients go on after HAProxy's timeout


@dataclass
class SlowClient:
    """Sends an upload's headers, then one byte of its body every half second."""

    cut_after: float | None = None  # seconds until the server answered or closed
    answer: bytes = b""

    def run(self, stop_at: float) -> None:
        started = time.monotonic()
        with socket.create_connection((HOST, HTTP_PORT), timeout=30) as sock:
            sock.sendall(
                b"POST /api/v1/device/uploads HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\n"
                + f"Content-Length: {SLOW_BODY_BYTES}\r\n\r\n".encode()
            )
            sock.settimeout(0.5)
            while time.monotonic() < stop_at:
                try:
                    self.answer = sock.recv(4096)
                    self.cut_after = time.monotonic() - started
                    return  # an answer, or b"" when the server closed the connection
                except TimeoutError:
                    pass
                try:
                    sock.sendall(b" ")
                except OSError:
                    self.cut_after = time.monotonic() - started
                    return


def test_slow_bodies_hold_no_worker_and_are_cut(e2e_cluster: E2ECluster, fleet, capsys):
    devices = [device for group in fleet.values() for device in group]
    watch = NodeWatch(e2e_cluster).start()
    load = DeviceLoad(e2e_cluster.url, devices).start()
    timeout = request_timeout()
    slow = [SlowClient() for _ in range(SLOW_CLIENTS)]
    stop_at = time.monotonic() + timeout + SLOW_GRACE
    threads = [threading.Thread(target=client.run, args=(stop_at,)) for client in slow]
    try:
        time.sleep(1)
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(1)
    finally:
        load.stop()
        failed_checks = watch.stop()
    summary = e2e_cluster.assert_exactly_once(devices)
    cut = sorted(round(c.cut_after, 1) for c in slow if c.cut_after is not None)
    answers = {c.answer.split(b"\r\n", 1)[0].decode(errors="replace") for c in slow}
    report(
        capsys,
        f"\nslow bodies: {SLOW_CLIENTS} clients dribbling 2 bytes/s; cut after {cut} s with"
        f" {answers}; devices: {len(load.attempts)} attempts, {len(load.failures())} failed;"
        f" failed health checks {failed_checks}; statuses seen {watch.seen}; {summary}",
    )
    assert not load.unexpected, load.unexpected
    assert load.failures() == []
    assert failed_checks == {name: 0 for name in NODES}
    assert watch.never_left_up(), watch.seen
    # HAProxy cut every slow client once its whole request had not arrived in time.
    assert len(cut) == SLOW_CLIENTS, cut
    assert all(timeout - 1 <= after <= timeout + 3 for after in cut), cut
    assert answers == {"HTTP/1.1 408 Request Time-out"}, answers


# -- bodies over the limit ----------------------------------------------------------------


def send_big_body(port: int, size: int) -> tuple[bytes, int]:
    """POST an unauthenticated upload of `size` bytes, sending the body as fast as the
    server takes it; the answer (b"" if the server closed without one) and how many body
    bytes the server had taken by then (what the kernel's socket buffers held, at most,
    unless the server read the body)."""
    chunk = b" " * 65536
    sent = 0
    with socket.create_connection((HOST, port), timeout=30) as sock:
        sock.sendall(
            b"POST /api/v1/device/uploads HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n" + f"Content-Length: {size}\r\n\r\n".encode()
        )
        while sent < size:
            readable, writable, _ = select.select([sock], [sock], [], 10)
            if readable:
                break
            assert writable, f"the server neither read nor answered after {sent} bytes"
            try:
                sent += sock.send(chunk[: size - sent])
            except OSError:  # closed by the server
                break
        chunks = []
        with contextlib.suppress(OSError):
            while data := sock.recv(65536):
                chunks.append(data)
    return b"".join(chunks), sent


def split_answer(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *header_lines = head.decode(errors="replace").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def padded_upload(device: DeviceRecord, size: int) -> bytes:
    """A valid one-reading upload padded with JSON whitespace to exactly `size` bytes."""
    reading = {"ts": "2026-08-01T00:00:00+00:00", "metric": "edge", "value": 1.0}
    body = json.dumps({"batch_id": f"edge-{device.device_id}", "readings": [reading]}).encode()
    return body[:-1] + b" " * (size - len(body)) + b"}"


def test_a_body_over_the_limit_is_refused_unread(e2e_cluster: E2ECluster, capsys):
    huge = 300 * 1024 * 1024
    raw, taken = send_big_body(HTTP_PORT, huge)
    status, headers, body = split_answer(raw)
    node_port = int(E2E_ENV["FLEET_APP_PORTS"].split(",")[0])
    node_raw, node_taken = send_big_body(node_port, huge)
    (device,) = enroll_fleet(e2e_cluster, f"edge-{time.time_ns()}", 1)
    at_limit = post_upload(e2e_cluster.url, device.token, padded_upload(device, UPLOAD_MAX_BYTES))
    over_limit = post_upload(
        e2e_cluster.url, device.token, padded_upload(device, UPLOAD_MAX_BYTES + 1)
    )
    report(
        capsys,
        f"\n300 MiB body: HAProxy answered {status!r} having taken {taken:,} bytes: {body!r};"
        f" a node reached directly answered {node_raw[:40]!r} having taken {node_taken:,} bytes;"
        f" {UPLOAD_MAX_BYTES} bytes: {at_limit[0]}, one byte more: {over_limit[0]}",
    )
    # Refused with what the socket buffers held, not after reading 300 MiB.
    assert taken < huge // 10 and node_taken < huge // 10, (taken, node_taken)
    assert status.startswith("HTTP/1.1 413 "), raw[:300]
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert json.loads(body) == {
        "detail": f"the body is larger than the upload limit of {UPLOAD_MAX_BYTES} bytes"
    }
    assert node_raw == b"", node_raw[:300]  # uWSGI's limit-post drops it without an answer
    # The limit is Django's own: a body of exactly the limit is an upload like any other.
    assert at_limit[0] == 202, at_limit
    assert over_limit[0] == 413, over_limit
    assert over_limit[1]["detail"] == json.loads(body)["detail"]
    device.extra_readings = 1
    e2e_cluster.assert_exactly_once([device])
