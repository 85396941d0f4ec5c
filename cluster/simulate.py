"""A short device simulation through HAProxy, so a fresh cluster has data to look at.

Standard library only: it speaks HTTP to the frontend like any device outside the
cluster would, with the demo devices' tokens from var/cluster.json. Each batch covers
the time since the device's previous batch, so readings never overlap.
"""

import json
import math
import random
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

POINTS_PER_METRIC = 10  # x 2 metrics = 20 readings per batch
FIRST_WINDOW_SECONDS = 60.0
REQUEST_TIMEOUT = 10.0


@dataclass
class SimulationResult:
    devices: int = 0
    batches_sent: int = 0
    batches_accepted: int = 0
    readings_accepted: int = 0
    last_upload: dict[str, Any] | None = None  # {"token", "upload_id"} of the last accepted one


def readings_between(start: datetime, end: datetime, phase: float) -> list[dict[str, Any]]:
    """Temperature and humidity at POINTS_PER_METRIC instants in (start, end]."""
    step = (end - start) / POINTS_PER_METRIC
    readings = []
    for i in range(1, POINTS_PER_METRIC + 1):
        ts = start + step * i
        wave = math.sin(ts.timestamp() / 300 + phase)
        stamp = ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        readings.append({"ts": stamp, "metric": "temp", "value": round(21 + 3 * wave, 2)})
        readings.append(
            {"ts": stamp, "metric": "humidity", "value": round(45 - 10 * wave + random.random(), 2)}
        )
    return readings


def upload(base_url: str, token: str, batch: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST one batch; (status, JSON body), status 0 when the frontend did not answer."""
    request = urllib.request.Request(
        f"{base_url.rstrip('/')}/api/v1/device/uploads",
        data=json.dumps(batch).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}
    except (OSError, ValueError):
        return 0, {}


def simulate(
    base_url: str,
    devices: list[dict[str, Any]],
    *,
    batches: int = 3,
    seconds: float | None = None,
    interval: float = 1.0,
) -> SimulationResult:
    """Upload `batches` batches per device, backdated a minute apart and ending now; or,
    with `seconds`, one batch per device every `interval` seconds for that long.
    """
    result = SimulationResult()
    with_token = [device for device in devices if device.get("token")]
    result.devices = len(with_token)
    if not with_token:
        return result
    window = timedelta(seconds=FIRST_WINDOW_SECONDS)
    previous_end: dict[str, datetime] = {}

    def send_round(end: datetime) -> None:
        for phase, device in enumerate(with_token):
            serial = str(device.get("serial") or device.get("device_id"))
            start = previous_end.get(serial, end - window)
            previous_end[serial] = end
            batch = {
                "batch_id": f"sim-{serial}-{uuid.uuid4().hex[:16]}",
                "readings": readings_between(start, end, phase),
            }
            status, body = upload(base_url, device["token"], batch)
            result.batches_sent += 1
            if status == 202:
                result.batches_accepted += 1
                result.readings_accepted += len(batch["readings"])
                result.last_upload = {"token": device["token"], "upload_id": body.get("upload_id")}

    if seconds is None:
        now = datetime.now(UTC)
        for k in range(batches):
            send_round(now - window * (batches - 1 - k))
        return result
    deadline = time.monotonic() + seconds
    while True:
        send_round(datetime.now(UTC))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return result
        time.sleep(min(interval, remaining))
