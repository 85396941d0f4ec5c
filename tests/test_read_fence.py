"""Reads see the fence too: a write that completed before a read began is visible to it,
on every process, during and after a move, a rollback and a resume.

This process keeps its cached placement (PLACEMENT_LOCAL_TTL) while another process
moves the device, exactly as every other app node does after a move; then it writes
and reads back through the API, the portal and the admin, and no read may be stale.
"""

import json
import time
from datetime import timedelta

import pytest
from django.test import Client

from core.models import MoveJob, User
from routers.placement import shard_for_device
from shards.commands import create_command
from shards.models import Command, DeviceFence, Reading, Upload
from shards.series import device_series
from tests.api_helpers import bearer, post_json
from tests.factories import T0, make_device
from tests.move_helpers import Background, manage


@pytest.fixture
def world(shards):
    user = User.objects.create_user("watcher", password="pw")
    made = make_device(shard="shard_1", users=[user])
    client = Client()
    client.force_login(user)
    return {"user": user, "made": made, "device": made.device, "web": client}


def warm_caches(world) -> None:
    """Every read path once, so this process holds the placement (shard_1) in its cache."""
    device, web = world["device"], world["web"]
    assert web.get(f"/api/v1/devices/{device.pk}/commands").status_code == 200
    assert web.get(f"/devices/{device.pk}/").status_code == 200
    assert shard_for_device(device) == "shard_1"


def move_elsewhere(device_id: int, *extra: str) -> None:
    """Another process moves the device: this one keeps its stale cached placement."""
    moved = manage("move_device", str(device_id), "shard_2", "--json", *extra)
    assert moved.returncode == 0, moved.stderr


def upload(world, batch: str, second: int) -> int:
    reading = {"ts": (T0 + timedelta(seconds=second)).isoformat(), "metric": "t", "value": 7.5}
    body = {"batch_id": batch, "readings": [reading]}
    answer = post_json(Client(), "/api/v1/device/uploads", body, **bearer(world["made"].token))
    assert answer.status_code == 202, answer.content
    return answer.json()["upload_id"]


WRITE_ELSEWHERE = """
import json
from datetime import timedelta
from shards.commands import create_command
from shards.ingest import import_upload_now, stage_upload
from tests.factories import T0
reading = {{"ts": T0 + timedelta(seconds=600), "metric": "t", "value": 7.5}}
staged = stage_upload({device}, "elsewhere", [reading])
import_upload_now({device}, staged.upload.pk)
print(json.dumps({{"command": create_command({device}, "fresh").pk, "upload": staged.upload.pk}}))
"""


def write_in_another_process(device_id: int) -> dict[str, int]:
    """A command and an imported upload, written by another process (another app node)."""
    done = manage("shell", "-c", WRITE_ELSEWHERE.format(device=device_id))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_every_read_is_fresh(world) -> None:
    """Writes made by another process, read back by this one with its stale cache."""
    device, web = world["device"], world["web"]
    written = write_in_another_process(device.pk)
    listed = web.get(f"/api/v1/devices/{device.pk}/commands").json()["commands"]
    assert written["command"] in [c["id"] for c in listed]
    receipt = Client().get(
        f"/api/v1/device/uploads/{written['upload']}", **bearer(world["made"].token)
    )
    assert receipt.status_code == 200, receipt.content
    assert receipt.json()["status"] == "imported"
    readings = web.get(f"/api/v1/devices/{device.pk}/readings").json()["readings"]
    assert any(r["value"] == 7.5 and r["ts"].startswith("2026-01-01T00:10:00") for r in readings)
    span = "start=2026-01-01T00:00:00Z&end=2026-01-02T00:00:00Z"
    export = web.get(f"/devices/{device.pk}/export.csv?{span}")
    assert "2026-01-01T00:10:00+00:00,t,7.5" in b"".join(export.streaming_content).decode()
    series = device_series(device, T0, T0 + timedelta(hours=1))
    assert sum(bucket.count for bucket in series.metrics.get("t", [])) >= 1
    assert Command.objects.for_device(device).filter(pk=written["command"]).exists()
    assert Command.objects.for_device(device).filter(name="fresh").count() == 1
    assert Upload.objects.for_device(device).get(pk=written["upload"]).status == "imported"
    newest = Reading.objects.for_device(device).order_by("-ts").values_list("value", flat=True)
    assert next(iter(newest.iterator())) == 7.5
    page = web.get(f"/devices/{device.pk}/").content.decode()
    assert "fresh" in page  # the portal's command list


def test_reads_after_another_process_moved_the_device_are_fresh(world):
    upload(world, "before-move", 1)
    warm_caches(world)
    move_elsewhere(world["device"].pk)
    assert shard_for_device(world["device"]) == "shard_1"  # still stale here, on purpose
    assert_every_read_is_fresh(world)
    assert shard_for_device(world["device"]) == "shard_2"  # the fence sent us on


def test_reads_after_a_rolled_back_move_are_served_by_the_source(world):
    warm_caches(world)
    job = manage("move_device", str(world["device"].pk), "shard_2", "--json",
                 extra_env={"FLEET_MOVE_CRASH_AFTER": "verified"})  # fmt: skip
    assert job.returncode != 0  # killed after verifying: the device is fenced on shard_1
    (crashed,) = MoveJob.objects.filter(device=world["device"])
    rolled = manage("move_device", "--rollback", str(crashed.pk), "--json")
    assert rolled.returncode == 0, rolled.stderr
    assert_every_read_is_fresh(world)
    assert shard_for_device(world["device"]) == "shard_1"


def test_reads_after_a_crashed_move_is_resumed_are_fresh(world):
    warm_caches(world)
    crashed = manage("move_device", str(world["device"].pk), "shard_2", "--json",
                     extra_env={"FLEET_MOVE_CRASH_AFTER": "switched"})  # fmt: skip
    assert crashed.returncode != 0
    resumed = manage("move_device", "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert_every_read_is_fresh(world)


def test_a_read_during_the_fenced_window_waits_for_it_and_sees_the_result(world):
    device = world["device"]
    create_command(device.pk, "before")
    DeviceFence.objects.on_shard("shard_1").filter(device_id=device.pk).update(
        state=DeviceFence.State.FENCED
    )
    reader = Background(lambda: Command.objects.for_device(device).count(), "reader")
    reader.start()
    time.sleep(0.3)
    assert reader.is_alive()  # held, as a writer would be
    DeviceFence.objects.on_shard("shard_1").filter(device_id=device.pk).update(
        state=DeviceFence.State.ACTIVE
    )
    assert reader.outcome() == 1


def test_a_read_that_finds_nothing_is_still_fenced(world):
    """An empty answer proves nothing; the fence is asked before it is believed."""
    device = world["device"]
    warm_caches(world)
    move_elsewhere(device.pk)
    command = write_in_another_process(device.pk)["command"]  # only on shard_2
    assert not Command.objects.on_shard("shard_1").filter(pk=command).exists()
    # This process still thinks shard_1: each answer must come from shard_2 anyway.
    assert Command.objects.for_device(device).filter(pk=command).exists()
    assert shard_for_device(device) == "shard_2"  # the fence sent it on, and it learned


def test_a_moved_devices_read_with_moves_in_flight_in_the_overview(world):
    device = world["device"]
    warm_caches(world)
    move_elsewhere(device.pk)
    write_in_another_process(device.pk)
    page = world["web"].get("/api/v1/devices").json()
    (listed,) = page["devices"]
    assert listed["shard"] == "shard_2" and listed["last_seen_at"] is not None
    assert json.dumps(listed["latest"])  # latest values came from the new shard


def test_a_filter_no_row_can_match_still_answers(world):
    """A value outside the column's range makes Django skip the statement; the fenced
    count, exists and list must answer "none" as plain querysets do (not raise)."""
    device = world["device"]
    out_of_range = Upload.objects.for_device(device).filter(pk=2**63)
    assert out_of_range.count() == 0
    assert out_of_range.exists() is False
    assert list(out_of_range) == []
    assert list(out_of_range.iterator()) == []
    answer = Client().get(f"/api/v1/device/uploads/{2**63}", **bearer(world["made"].token))
    assert answer.status_code == 404, answer.content
