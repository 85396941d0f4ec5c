"""A mover killed at every point of a move: nothing is lost, and --resume or --rollback ends it.

Each test runs `manage.py move_device` as its own process with
FLEET_MOVE_CRASH_AFTER set, so the mover SIGKILLs itself right after that
point, leaving open connections, an advisory lock and a half-done job behind,
as a crashed machine would. Then it checks what the cluster looks like in
between, and finishes the job with another `manage.py` process.
"""

import io
import json
import signal
import time

import pytest
from django.core.management import CommandError, call_command

from core.models import MoveJob, Placement
from shards.commands import create_command
from shards.models import Command, Reading
from shards.moves import protocol
from shards.moves.protocol import MoveError
from tests.factories import make_device
from tests.move_helpers import (
    Background,
    PopulatedDevice,
    device_rows,
    fence_of,
    fence_states,
    manage,
    populate_device,
    row_counts,
    total_rows,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

Phase = MoveJob.Phase
OWNING = ("active", "copying")
READINGS = Reading._meta.db_table
# Every point protocol.py can crash after, in the order a move passes them.
CRASH_POINTS = [
    "created",
    "copying",
    "copied",
    "fence_committed",
    "fenced",
    "verified",
    "activated",
    "switched",
    "released",
]


@pytest.fixture
def device(shards) -> PopulatedDevice:
    return populate_device(make_device(shard="shard_1").device)


def crash_move(serial: str, point: str) -> MoveJob:
    """Start a move in a process that kills itself after `point`; the job it left."""
    proc = manage("move_device", serial, "shard_2", extra_env={"FLEET_MOVE_CRASH_AFTER": point})
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr)
    assert f"FLEET_MOVE_CRASH_AFTER={point}" in proc.stderr
    return MoveJob.objects.get(device__serial=serial)


def check_single_owner(device_id: int, job: MoveJob, readings: int) -> None:
    """No two shards own the device, the directory names one that holds all its rows."""
    states = fence_states(["shard_1", "shard_2"], device_id)
    owners = [alias for alias, state in states.items() if state in OWNING]
    assert len(owners) <= 1, states
    placed = Placement.objects.get(device_id=device_id).shard_id
    if states[placed] == "fenced":  # between fencing and the switch: writers wait
        assert placed == job.source_id
        assert set(owners) <= {job.target_id}, states  # activated, not yet switched
    else:
        assert states[placed] in OWNING, states
        assert owners == [placed], states
    for alias in {placed, *owners}:
        counted = Reading.objects.on_shard(alias).filter(device_id=device_id).count()
        assert counted == readings, (alias, states)


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_move_killed_at_any_point_is_finished_by_resume(device, point):
    before = device_rows("shard_1", device.pk)
    counts = row_counts("shard_1", device.pk)

    job = crash_move(device.device.serial, point)

    assert job.phase == (Phase.COPYING if point in ("copied", "fence_committed") else point)
    check_single_owner(device.pk, job, counts[READINGS])

    proc = manage("move_device", "--resume", "--json")

    assert proc.returncode == 0, proc.stderr
    resumed = json.loads(proc.stdout)
    if point == "released":
        assert resumed == []  # writers were released: nothing left to resume
    else:
        assert [(entry["job"], entry["phase"]) for entry in resumed] == [(job.pk, Phase.RELEASED)]
    job.refresh_from_db()
    assert job.phase == Phase.RELEASED
    assert job.error == ""
    assert job.verification["ok"] is True
    assert {t: e["rows"] for t, e in job.verification["tables"].items()} == counts
    assert {t: e["target_rows"] for t, e in job.verification["tables"].items()} == counts
    assert job.stall_ms is not None and job.stall_ms > 0
    placement = Placement.objects.get(device_id=device.pk)
    assert (placement.shard_id, placement.epoch) == ("shard_2", 2)
    assert fence_of("shard_2", device.pk) == ("active", 2)
    assert fence_of("shard_1", device.pk) == ("moved", 2)
    assert device_rows("shard_2", device.pk) == before  # same ids, states and values
    assert device_rows("shard_1", device.pk) == before  # until cleanup


# Points after which the dead mover leaves the source fenced (writers held) until resumed.
FENCED_POINTS = [
    "fence_committed",
    "fenced",
    "activated",
    "switched",
]
HELD_SECONDS = 0.5


@pytest.mark.parametrize("point", FENCED_POINTS)
def test_stall_ms_counts_the_time_a_dead_mover_kept_writers_waiting(device, point):
    job = crash_move(device.device.serial, point)
    assert fence_of("shard_1", device.pk) == ("fenced", 1)
    time.sleep(HELD_SECONDS)  # writers meeting the fence now wait for the resume

    assert manage("move_device", "--resume").returncode == 0

    job.refresh_from_db()
    assert job.phase == Phase.RELEASED
    assert job.stall_ms >= HELD_SECONDS * 1000, job.stall_ms


def test_a_move_killed_while_fenced_can_be_rolled_back(device):
    before = device_rows("shard_1", device.pk)
    job = crash_move(device.device.serial, "fenced")
    assert fence_of("shard_1", device.pk) == ("fenced", 1)
    assert total_rows("shard_2", device.pk) == sum(len(rows) for rows in before.values())

    proc = manage("move_device", "--rollback", str(job.pk), "--json")

    assert proc.returncode == 0, proc.stderr
    [summary] = json.loads(proc.stdout)
    assert (summary["job"], summary["phase"]) == (job.pk, Phase.ROLLED_BACK)
    job.refresh_from_db()
    assert job.phase == Phase.ROLLED_BACK and job.finished_at is not None
    placement = Placement.objects.get(device_id=device.pk)
    assert (placement.shard_id, placement.epoch) == ("shard_1", 1)
    assert fence_of("shard_1", device.pk) == ("active", 1)
    assert fence_of("shard_2", device.pk) is None
    assert total_rows("shard_2", device.pk) == 0
    assert device_rows("shard_1", device.pk) == before
    assert json.loads(manage("move_device", "--resume", "--json").stdout) == []


def test_a_rollback_is_refused_once_the_directory_switched(device):
    job = crash_move(device.device.serial, "switched")

    proc = manage("move_device", "--rollback", str(job.pk))

    assert proc.returncode == 1
    assert "only a job that has not switched the directory can be rolled back" in proc.stderr
    job.refresh_from_db()
    assert job.phase == Phase.SWITCHED
    assert Placement.objects.get(device_id=device.pk).shard_id == "shard_2"


def test_a_write_held_by_a_crashed_movers_fence_lands_after_resume(device):
    job = crash_move(device.device.serial, "fenced")
    writer = Background(lambda: create_command(device.pk, "waited"), "held-writer")
    writer.start()
    # The writer meets the fence the dead mover left and waits (FENCE_WAIT_SECONDS).
    wait_until(lambda: writer.started_at is not None, "the writer to start")
    time.sleep(0.3)
    assert writer.is_alive(), "the write went through a fenced source"

    proc = manage("move_device", "--resume")

    assert proc.returncode == 0, proc.stderr
    command = writer.outcome()
    job.refresh_from_db()
    assert job.phase == Phase.RELEASED
    assert command._state.db == "shard_2"
    assert Command.objects.on_shard("shard_2").filter(pk=command.pk).exists()
    assert not Command.objects.on_shard("shard_1").filter(pk=command.pk).exists()


def drop_target_connection(mover) -> None:
    """A bulk-copy step whose target server goes away under it (a failover, a restart)."""
    with mover.target.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")


def test_a_move_that_loses_a_shard_stops_cleanly_and_resume_finishes_it(device, monkeypatch):
    before = device_rows("shard_1", device.pk)
    counts = row_counts("shard_1", device.pk)
    monkeypatch.setitem(protocol._STEPS, Phase.COPYING, drop_target_connection)

    with pytest.raises(MoveError, match=r"interrupted at copying: lost its connection.*--resume"):
        protocol.move_device(device.pk, "shard_2")

    job = MoveJob.objects.get(device_id=device.pk)
    assert job.phase == Phase.COPYING and job.error.startswith("lost its connection to a shard")
    check_single_owner(device.pk, job, counts[READINGS])
    # Resumed while the shard is still away: the job stays, and the command says so.
    with pytest.raises(CommandError, match=rf"move job\(s\) {job.pk} still interrupted"):
        call_command("move_device", "--resume", stdout=io.StringIO(), stderr=io.StringIO())
    monkeypatch.undo()
    proc = manage("move_device", "--resume", "--json")
    assert proc.returncode == 0, proc.stderr
    assert [(e["job"], e["phase"]) for e in json.loads(proc.stdout)] == [(job.pk, Phase.RELEASED)]
    assert Placement.objects.get(device_id=device.pk).shard_id == "shard_2"
    assert device_rows("shard_2", device.pk) == before
    job.refresh_from_db()
    assert job.error == ""  # the lost connection is history once the move got through
