"""Read-your-writes across moves, measured from outside through HAProxy.

Every app node's processes hold cached placements (warmed by reads first); a device is
moved by another process (`manage.py move_device`); then an admin creates a command
and lists the device's commands, and the device uploads and reads its receipt, over and
over through HAProxy's round robin. A read that misses a write completed before it is a
stale read; there must be none.
"""

import http.client
import json
import time
from contextlib import closing

from tests.e2e.conftest import E2E_ENV, Browser, E2ECluster, enroll, report

PORT = int(E2E_ENV["FLEET_HTTP_PORT"])
DEVICES = 4
ROUNDS = 10


def device_request(token: str, method: str, path: str, body: bytes = b"") -> tuple[int, dict]:
    with closing(http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)) as connection:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        connection.request(method, path, body=body or None, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")


def test_no_read_misses_a_write_after_a_move(e2e_cluster: E2ECluster, capsys):
    info = e2e_cluster.info
    admin = Browser(PORT, info["admin_user"], info["admin_password"])
    devices = [enroll(e2e_cluster, f"read-fence-{time.time_ns()}-{n}") for n in range(DEVICES)]
    for device in devices:  # every process learns every placement
        for _ in range(12):
            device_request(device.token, "GET", "/api/v1/device/commands")
            admin.request("GET", f"/api/v1/devices/{device.device_id}/commands")

    placement = e2e_cluster.placements()
    stale: list[str] = []
    reads = 0
    for device in devices:
        target = "shard_2" if placement[device.device_id] == "shard_1" else "shard_1"
        e2e_cluster.manage("move_device", str(device.device_id), target, "--json")
        for number in range(ROUNDS):
            status, sent = admin.request(
                "POST",
                f"/api/v1/devices/{device.device_id}/commands",
                json.dumps({"name": f"after-move-{number}"}),
                {"Content-Type": "application/json"},
            )
            assert status == 201, sent
            command_id = json.loads(sent)["id"]
            status, listed = admin.request("GET", f"/api/v1/devices/{device.device_id}/commands")
            reads += 1
            if command_id not in [c["id"] for c in json.loads(listed)["commands"]]:
                stale.append(f"device {device.device_id}: command {command_id} not listed")
            reading = {"ts": 1_700_000_000 + number, "metric": "fence", "value": number}
            body = json.dumps({"batch_id": f"after-move-{number}", "readings": [reading]})
            status, answer = device_request(
                device.token, "POST", "/api/v1/device/uploads", body.encode()
            )
            assert status == 202, answer
            status, receipt = device_request(
                device.token, "GET", f"/api/v1/device/uploads/{answer['upload_id']}"
            )
            reads += 1
            if status != 200:
                stale.append(f"device {device.device_id}: receipt {status} {receipt}")
    report(capsys, f"\n[read fence] {reads} reads right after {DEVICES} moves: {len(stale)} stale")
    assert stale == []
