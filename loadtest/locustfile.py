"""Locust scenarios for the fleet cluster: a device swarm, web users, and both at once.

An outside client: it talks HTTP only and reads connection details (URL, fleet
key, logins) from the cluster's var/cluster.json. It imports no project code.

    locust -f loadtest/locustfile.py DeviceUser            # the device swarm
    locust -f loadtest/locustfile.py WebUser               # web users
    locust -f loadtest/locustfile.py DeviceUser WebUser    # the mix (weights 10:1)
    locust -f loadtest/locustfile.py EmptyViewUser         # the empty-view ceiling

Knobs (environment variables, so `make` targets and tests can set them):

- LOADTEST_CLUSTER_JSON  path of cluster.json (default var/cluster.json)
- LOADTEST_BATCH         readings per upload (default 10)
- LOADTEST_INTERVAL      a device starts an upload every so many seconds, or as soon as
                         the last one is answered if that took longer (default 1;
                         0 = flat out, back to back)
- LOADTEST_TARGETS       comma-separated base URLs the devices spread over, one per
                         device round-robin (default: the cluster's HAProxy URL)
- LOADTEST_LEDGER_DIR    where each locust process writes ledger-<pid>.json: per device,
                         the batches acknowledged (and any never answered), which
                         loadtest/verify.py checks against the databases
- LOADTEST_RUN           a tag for serial numbers and batch ids (default: time-based)
- LOADTEST_WEB_USER / LOADTEST_WEB_PASSWORD  web login (default: the admin, who sees
                         and commands every device, so commands reach the swarm)

A device retries a batch with the same batch_id (as real devices do) until it is
acknowledged, so a timeout never leaves a reading whose fate is unknown; locust's
--stop-timeout lets the batch in flight finish when the run ends.
"""

import itertools
import json
import os
import random
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from locust import FastHttpUser, between, constant, constant_throughput, events, task

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_JSON = Path(os.environ.get("LOADTEST_CLUSTER_JSON", ROOT / "var" / "cluster.json"))
BATCH = int(os.environ.get("LOADTEST_BATCH", "10"))
INTERVAL = float(os.environ.get("LOADTEST_INTERVAL", "1"))
RUN = os.environ.get("LOADTEST_RUN") or f"lt{int(time.time())}"
LEDGER_DIR = os.environ.get("LOADTEST_LEDGER_DIR", "")
MAX_ATTEMPTS = 20
RETRY_PAUSE = 0.2
# Readings are dated in the past, one second apart per device, so batches never overlap.
T0 = datetime(2026, 1, 1, tzinfo=UTC)
METRICS = ("temp", "pressure", "humidity", "voltage")


def cluster_info() -> dict:
    return json.loads(CLUSTER_JSON.read_text())


INFO = cluster_info()
TARGETS = [
    url.rstrip("/")
    for url in os.environ.get("LOADTEST_TARGETS", INFO["url"]).split(",")
    if url.strip()
]
_serials = itertools.count()
_ledger_lock = threading.Lock()
# device_id -> {"serial", "acknowledged": {batch_id: readings}, "unanswered": {...}}
LEDGER: dict[int, dict] = {}


def batch_body(batch_id: str, first_second: int, size: int) -> bytes:
    readings = []
    for i in range(size):
        second = first_second + i
        ts = T0 + timedelta(seconds=second // len(METRICS))
        readings.append(
            {"ts": ts.isoformat(), "metric": METRICS[second % len(METRICS)], "value": i * 0.25}
        )
    return json.dumps({"batch_id": batch_id, "readings": readings}).encode()


def retry_after(response) -> float:
    """How long to wait before the same batch again: Retry-After if given, capped."""
    try:
        given = float((response.headers or {}).get("Retry-After") or 0)
    except (TypeError, ValueError):
        given = 0.0
    return min(max(RETRY_PAUSE, given), 2.0)


class DeviceUser(FastHttpUser):
    """A field device: enrols once, then uploads a batch per interval and runs the
    commands that come back in the answer, reporting each result."""

    weight = 10
    host = TARGETS[0]
    # Paced by the start of each upload, not by the gap after it: a paced run offers a
    # rate (devices / interval) that slow answers do not lower.
    wait_time = constant_throughput(1 / INTERVAL) if INTERVAL > 0 else constant(0)

    def on_start(self) -> None:
        number = next(_serials)
        self.base = TARGETS[number % len(TARGETS)]
        self.serial = f"{RUN}-{os.getpid()}-{number}"
        self.batches = 0
        self.device_id: int | None = None
        body = {"provisioning_key": INFO["provisioning_key"], "serial": self.serial}
        for _ in range(MAX_ATTEMPTS):
            with self.client.post(
                f"{self.base}/api/v1/device/enroll",
                json=body,
                name="enroll",
                catch_response=True,
            ) as response:
                if response.status_code == 201:
                    data = response.json()
                    self.device_id, self.token = data["device_id"], data["token"]
                    break
                response.failure(f"enroll: {response.status_code} {response.text[:200]}")
            time.sleep(RETRY_PAUSE)
        if self.device_id is None:
            self.stop()
            return
        self.headers = {"Authorization": f"Bearer {self.token}"}
        with _ledger_lock:
            LEDGER[self.device_id] = {"serial": self.serial, "acknowledged": {}, "unanswered": {}}

    @task
    def upload(self) -> None:
        batch_id = f"{self.serial}-{self.batches}"
        body = batch_body(batch_id, self.batches * BATCH, BATCH)
        self.batches += 1
        headers = {**self.headers, "Content-Type": "application/json"}
        answer = None
        for _ in range(MAX_ATTEMPTS):
            with self.client.post(
                f"{self.base}/api/v1/device/uploads",
                data=body,
                headers=headers,
                name=f"upload ({BATCH} readings)",
                catch_response=True,
            ) as response:
                if response.status_code == 202:
                    answer = response.json()
                    break
                response.failure(f"upload: {response.status_code} {response.text[:200]}")
                if response.status_code and response.status_code < 500:
                    break  # a 4xx will not get better by retrying
                pause = retry_after(response)
            time.sleep(pause)
        with _ledger_lock:
            record = LEDGER[self.device_id]
            if answer is None:
                record["unanswered"][batch_id] = BATCH
            else:
                record["acknowledged"][batch_id] = BATCH
        for command in (answer or {}).get("commands", []):
            self.report(command["id"])

    def report(self, command_id: int) -> None:
        self.client.post(
            f"{self.base}/api/v1/device/commands/{command_id}/result",
            json={"status": "succeeded", "result": {"by": "loadtest"}},
            headers=self.headers,
            name="command result",
        )


class EmptyViewUser(FastHttpUser):
    """The ceiling: `GET /healthz` back to back, a Django view that touches no database,
    through the same HAProxy and uWSGI nodes as the devices (`make bench` sets uploads
    against it)."""

    host = TARGETS[0]
    wait_time = constant(0)

    @task
    def healthz(self) -> None:
        self.client.get("/healthz", name="empty view")


class WebUser(FastHttpUser):
    """A person in the portal: the device list, a device's page and live data, and
    commands sent through the API (picked up by the swarm in its upload answers)."""

    weight = 1
    host = TARGETS[0]
    wait_time = between(1, 3)

    def on_start(self) -> None:
        self.username = os.environ.get("LOADTEST_WEB_USER", INFO["admin_user"])
        self.password = os.environ.get(
            "LOADTEST_WEB_PASSWORD",
            INFO["admin_password"] if self.username == INFO["admin_user"] else INFO["web_password"],
        )
        self.device_ids: list[int] = []
        page = self.client.get("/accounts/login/", name="login form")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text or "")
        self.client.post(
            "/accounts/login/",
            data={
                "username": self.username,
                "password": self.password,
                "csrfmiddlewaretoken": token.group(1) if token else "",
            },
            headers={"Referer": f"{self.host}/accounts/login/"},
            name="login",
        )

    def csrf(self) -> dict[str, str]:
        cookies = self.client.cookiejar
        value = next((c.value for c in cookies if c.name == "csrftoken"), "")
        return {"X-CSRFToken": value, "Referer": f"{self.host}/"}

    @task(3)
    def dashboard(self) -> None:
        self.client.get("/devices/", name="portal: device list")
        response = self.client.get("/api/v1/devices?limit=100", name="api: my devices")
        if response.status_code == 200:
            self.device_ids = [d["device_id"] for d in response.json()["devices"]]

    @task(3)
    def device_page(self) -> None:
        if not self.device_ids:
            return
        device_id = random.choice(self.device_ids)
        self.client.get(f"/devices/{device_id}/", name="portal: device page")
        self.client.get(f"/devices/{device_id}/live", name="portal: live")
        self.client.get(f"/api/v1/devices/{device_id}/commands", name="api: device commands")

    @task(1)
    def send_command(self) -> None:
        if not self.device_ids:
            return
        device_id = random.choice(self.device_ids)
        self.client.post(
            f"/api/v1/devices/{device_id}/commands",
            json={"name": "reboot", "args": {"by": "loadtest"}, "expires_in": 600},
            headers=self.csrf(),
            name="api: send command",
        )


@events.quitting.add_listener
def write_ledger(environment, **_kwargs) -> None:
    """Each process writes what its devices were told, for loadtest/verify.py."""
    if not LEDGER_DIR:
        return
    path = Path(LEDGER_DIR)
    path.mkdir(parents=True, exist_ok=True)
    with _ledger_lock:
        data = {"run": RUN, "batch": BATCH, "devices": {str(k): v for k, v in LEDGER.items()}}
    (path / f"ledger-{os.getpid()}.json").write_text(json.dumps(data, indent=1))
