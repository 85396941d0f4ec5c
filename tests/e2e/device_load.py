"""A steady stream of device uploads through HAProxy, as real devices would send it.

Each simulated device is a thread that uploads numbered batches and retries a
batch (same batch_id) on connection errors and 5xx answers, honouring
Retry-After, until it is acknowledged. Every attempt is recorded with its time
so a test can say when failures happened; every acknowledged batch is
remembered so stored readings can be checked against it. Standard library only:
this is an outside client.
"""

import http.client
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

READINGS_PER_BATCH = 10
REQUEST_TIMEOUT = 10.0
RETRY_PAUSE = 0.2
T0 = datetime(2026, 6, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Attempt:
    at: float  # time.monotonic()
    device_id: int
    batch: int
    status: int | None  # None: no HTTP answer (connection refused, reset, timeout)
    error: str = ""
    retry_after: str | None = None

    @property
    def failed(self) -> bool:
        return self.status is None or self.status >= 500


@dataclass
class DeviceRecord:
    device_id: int
    token: str
    acknowledged: dict[int, int] = field(default_factory=dict)  # batch -> upload_id
    # Readings acknowledged outside the load's numbered batches (a test's bulk uploads).
    extra_readings: int = 0

    @property
    def readings_acknowledged(self) -> int:
        return len(self.acknowledged) * READINGS_PER_BATCH + self.extra_readings


def batch_body(device_id: int, batch: int) -> bytes:
    start = T0 + timedelta(seconds=batch * READINGS_PER_BATCH)
    readings = [
        {"ts": (start + timedelta(seconds=i)).isoformat(), "metric": "load", "value": float(i)}
        for i in range(READINGS_PER_BATCH)
    ]
    return json.dumps({"batch_id": f"load-{device_id}-{batch}", "readings": readings}).encode()


def connect(
    base_url: str, ssl_context: ssl.SSLContext | None = None, timeout: float = REQUEST_TIMEOUT
) -> http.client.HTTPConnection:
    """A connection to an http:// or https:// base URL (certificates checked by the context)."""
    parts = urlsplit(base_url)
    if parts.scheme == "https":
        return http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, context=ssl_context
        )
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


def post_upload(
    base_url: str, token: str, body: bytes, ssl_context: ssl.SSLContext | None = None
) -> tuple[int | None, dict, str]:
    connection = connect(base_url, ssl_context)
    try:
        connection.request(
            "POST",
            "/api/v1/device/uploads",
            body=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        response = connection.getresponse()
        payload = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        try:
            data = json.loads(payload) if payload else {}
        except ValueError:
            data = {"raw": payload[:200].decode(errors="replace")}
        return response.status, {**data, "_headers": headers}, ""
    except (OSError, http.client.HTTPException) as exc:
        return None, {}, f"{type(exc).__name__}: {exc}"
    finally:
        connection.close()


class DeviceLoad:
    """Runs one thread per device until stop(); keeps every attempt and acknowledgement."""

    def __init__(
        self,
        base_url: str,
        devices: list[DeviceRecord],
        interval: float = 0.05,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self.base_url = base_url
        self.ssl_context = ssl_context
        self.devices = devices
        self.interval = interval
        self.attempts: list[Attempt] = []
        self.unexpected: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(d,), name=f"device-{d.device_id}")
            for d in devices
        ]

    def start(self) -> "DeviceLoad":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stop sending new batches; batches in flight are retried until acknowledged."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)

    def _record(self, attempt: Attempt) -> None:
        with self._lock:
            self.attempts.append(attempt)

    def _run(self, device: DeviceRecord) -> None:
        batch = 0
        while not self._stop.is_set():
            self._send_until_acknowledged(device, batch)
            batch += 1
            time.sleep(self.interval)

    def _send_until_acknowledged(self, device: DeviceRecord, batch: int) -> None:
        body = batch_body(device.device_id, batch)
        give_up = time.monotonic() + 120
        while time.monotonic() < give_up:
            status, data, error = post_upload(self.base_url, device.token, body, self.ssl_context)
            retry_after = data.get("_headers", {}).get("retry-after")
            self._record(
                Attempt(time.monotonic(), device.device_id, batch, status, error, retry_after)
            )
            if status == 202:
                device.acknowledged[batch] = data["upload_id"]
                return
            if status is not None and status < 500:
                problem = f"device {device.device_id} batch {batch}: {status} {data}"
                with self._lock:
                    self.unexpected.append(problem)
                return
            time.sleep(min(max(RETRY_PAUSE, float(retry_after or 0)), 2.0))
        with self._lock:
            self.unexpected.append(f"device {device.device_id} batch {batch}: never acknowledged")

    # What a test asserts on ------------------------------------------------------

    def failures(self, device_ids: set[int] | None = None) -> list[Attempt]:
        with self._lock:
            return [
                a for a in self.attempts
                if a.failed and (device_ids is None or a.device_id in device_ids)
            ]  # fmt: skip

    def successes_after(self, moment: float, device_ids: set[int] | None = None) -> int:
        with self._lock:
            return sum(
                1
                for a in self.attempts
                if a.status == 202 and a.at > moment
                and (device_ids is None or a.device_id in device_ids)
            )  # fmt: skip

    def first_success_after(self, moment: float, device_id: int) -> float | None:
        with self._lock:
            times = [
                a.at for a in self.attempts
                if a.device_id == device_id and a.status == 202 and a.at > moment
            ]  # fmt: skip
        return min(times, default=None)
