"""Rebalancing for real: three PostgreSQL shards, devices with readings, moved online.

Every check reads the stored rows back: readings are counted on every shard,
only for devices that shard owns (its fence row), so a moved device's rows
waiting for cleanup on its old shard never count twice.
"""

import json
from contextlib import closing
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections

from core.models import MoveJob, Placement, Rebalance, Shard
from shards.fence import write_for_device
from shards.models import DeviceFence, Reading
from shards.moves.protocol import MoveError, start_move
from shards.rebalance.costs import gather_fleet
from shards.rebalance.entries import FAILED, MOVED, SKIPPED, plan_entries
from shards.rebalance.locks import RunnerLock, exclusive_runner
from shards.rebalance.observer import Observer
from shards.rebalance.options import RunOptions
from shards.rebalance.planner import Plan, PlannedMove, plan_rebalance
from shards.rebalance.runner import create_run, execute, request_stop
from tests.factories import make_device, reading_times

OWNED = ("active", "copying", "fenced")


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def run_json(*args: str) -> dict:
    return json.loads(run(*args, "--json"))


def give_readings(device_id: int, count: int) -> None:
    """`count` readings for the device, written on its shard through the fence."""
    rows = [
        Reading(device_id=device_id, metric="temp", ts=ts, value=float(i))
        for i, ts in enumerate(reading_times(count))
    ]
    write_for_device(device_id, lambda alias: Reading.objects.on_shard(alias).bulk_create(rows))


def make_devices(shard: str, readings: list[int]) -> list[int]:
    """One device per entry on `shard`, with that many readings; their ids."""
    ids = []
    for count in readings:
        device = make_device(shard=shard).device
        if count:
            give_readings(device.pk, count)
        ids.append(device.pk)
    return ids


def owned_readings(aliases: list[str]) -> dict[int, int]:
    """Readings per device summed over every shard, counting only devices a shard owns."""
    counts: dict[int, int] = {}
    for alias in aliases:
        with connections[alias].cursor() as cursor:
            cursor.execute(
                f"SELECT r.device_id, count(*) FROM {Reading._meta.db_table} r"
                f" JOIN {DeviceFence._meta.db_table} f USING (device_id)"
                " WHERE f.state = ANY(%s) GROUP BY r.device_id",
                [list(OWNED)],
            )
            for device_id, count in cursor.fetchall():
                counts[device_id] = counts.get(device_id, 0) + count
    return counts


def placements() -> dict[int, str]:
    return dict(Placement.objects.values_list("device_id", "shard_id"))


@pytest.fixture
def crowded(three_shards) -> list[int]:
    """Nine devices on shard_1 with 10, 20, ... 90 readings (450 rows); the others empty."""
    return make_devices("shard_1", [10 * n for n in range(1, 10)])


def test_rebalance_spreads_rows_and_keeps_every_reading(three_shards, crowded):
    before = owned_readings(three_shards)
    assert sum(before.values()) == 450

    result = run_json("rebalance")

    summary = result["run"]
    assert summary["state"] == "finished"
    assert summary["counts"]["moved"] == summary["counts"]["planned"] == 4
    assert summary["loads_before"] == {"shard_1": 450, "shard_2": 0, "shard_3": 0}
    assert summary["loads_after"] == {"shard_1": 150, "shard_2": 150, "shard_3": 150}
    assert owned_readings(three_shards) == before
    where = placements()
    for entry in summary["plan"]:
        assert where[entry["device"]] == entry["target"] != entry["source"]
    assert [job["phase"] for job in summary["moves"]] == ["released"] * 4
    run_row = Rebalance.objects.get(pk=summary["run"])
    assert run_row.kind == "rebalance" and run_row.cost == "rows"
    assert {job.requested_by for job in run_row.moves.all()} == {f"rebalance {run_row.pk}"}
    # Balanced now: a new plan finds nothing worth moving.
    again = run_json("rebalance", "--dry-run")
    assert again["plan"]["moves"] == []
    assert again["plan"]["loads_before"] == {"shard_1": 150, "shard_2": 150, "shard_3": 150}


def test_weights_decide_the_shares(three_shards):
    make_devices("shard_1", [0] * 8)
    Shard.objects.filter(alias="shard_3").update(weight=200)

    result = run_json("rebalance", "--cost", "devices")

    assert result["run"]["loads_after"] == {"shard_1": 2, "shard_2": 2, "shard_3": 4}
    shares = {alias: list(placements().values()).count(alias) for alias in three_shards}
    assert shares == {"shard_1": 2, "shard_2": 2, "shard_3": 4}


def test_human_output_shows_plan_progress_and_summary(three_shards, crowded):
    out = run("rebalance", "--max-moves", "2")
    assert "device" in out and "shard_1" in out and "planning stopped" in out
    assert "2 planned: 2 moved" in out
    assert Rebalance.objects.get().state == "finished"


def test_dry_run_changes_nothing(three_shards, crowded):
    where, readings = placements(), owned_readings(three_shards)

    out = run("rebalance", "--dry-run", "--cost", "bytes")

    assert "dry run: nothing was changed" in out
    assert "shard_2" in out and "bytes before" in out
    data = run_json("rebalance", "--dry-run")
    assert data["dry_run"] is True and data["run"] is None
    assert len(data["plan"]["moves"]) == 4
    assert placements() == where and owned_readings(three_shards) == readings
    assert not Rebalance.objects.exists() and not MoveJob.objects.exists()


def plan_of(*moves: tuple[int, str, str]) -> Plan:
    """A hand-made plan: (device, source, target) with cost 1 each."""
    planned = [
        PlannedMove(device, f"d{device}", source, target, 1) for device, source, target in moves
    ]
    loads: dict[str, int] = {}
    return Plan(planned, loads, loads, {}, len(planned), "by hand")


class StopAfterFirstMove(Observer):
    """Asks the run to stop, as `rebalance --stop` from another process would."""

    def move_finished(self, entry) -> None:
        self.stop = request_stop()


def test_a_stop_request_ends_a_serial_run_after_the_current_move(three_shards, crowded):
    shards, devices = gather_fleet("rows")
    plan = plan_rebalance(shards, devices)
    with exclusive_runner() as lock:
        one_at_a_time = RunOptions(parallel=1)
        run_row = create_run(lock, kind="rebalance", cost="rows", plan=plan, options=one_at_a_time)
        observer = StopAfterFirstMove()
        execute(run_row, lock, observer)

    run_row.refresh_from_db()
    assert "it starts no new move" in observer.stop[1]
    assert run_row.state == "stopped" and run_row.finished_at is not None
    assert [entry["status"] for entry in run_row.plan] == [MOVED, "pending", "pending", "pending"]
    assert run_row.moves.count() == 1


def test_stop_command_asks_a_live_run_and_abandons_an_interrupted_one(three_shards):
    live = Rebalance.objects.create(kind="rebalance", plan=[])
    with closing(RunnerLock()) as other_process:
        other_process.claim(live)
        answer = run_json("rebalance", "--stop")
        assert answer["run"] == live.pk and answer["state"] == "stopping"
        assert "asked rebalance" in answer["message"]
        assert "fleet-rebalance pid" in answer["message"]

    dead = Rebalance.objects.create(kind="rebalance", plan=[])
    answer = run_json("rebalance", "--stop", str(dead.pk))
    assert answer["state"] == "stopped"
    assert "was not running (interrupted)" in answer["message"]
    with pytest.raises(CommandError, match="is stopped: there is nothing to stop"):
        run("rebalance", "--stop", str(dead.pk))


def test_a_second_rebalance_is_refused_while_one_runs(three_shards, crowded):
    with exclusive_runner() as lock:
        with pytest.raises(CommandError, match="another rebalance or drain"):
            run("rebalance")
        running = create_run(lock, kind="rebalance", cost="rows", plan=plan_of())
        with pytest.raises(CommandError, match=f"rebalance {running.pk} is running"):
            run("rebalance", "--resume")
    assert MoveJob.objects.count() == 0


def test_resume_finishes_the_interrupted_job_then_the_remaining_moves(three_shards, crowded):
    before = owned_readings(three_shards)
    shards, devices = gather_fleet("rows")
    plan = plan_rebalance(shards, devices)
    # What a runner killed during its first move leaves: a run nobody holds, a job mid-way.
    interrupted = Rebalance.objects.create(
        kind="rebalance", cost="rows", plan=plan_entries(plan), loads_before=plan.loads_before
    )
    first = plan.moves[0]
    job = start_move(first.device_id, first.target, rebalance=interrupted, requested_by="test")

    with pytest.raises(CommandError, match=f"rebalance {interrupted.pk} was interrupted"):
        run("rebalance")
    status = run("rebalance", "--status")
    assert "INTERRUPTED" in status

    result = run_json("rebalance", "--resume")

    assert [j["job"] for j in result["resumed_jobs"]] == [job.pk]
    assert result["resumed_jobs"][0]["phase"] == "released"
    (resumed,) = result["runs"]
    assert resumed["run"] == interrupted.pk and resumed["state"] == "finished"
    assert resumed["counts"]["moved"] == len(plan.moves) == 4
    assert resumed["plan"][0]["job"] == job.pk
    assert MoveJob.objects.filter(device_id=first.device_id).count() == 1
    assert owned_readings(three_shards) == before
    assert run("rebalance", "--resume").strip().startswith("nothing to resume")


def test_failed_and_outdated_moves_are_reported_and_the_run_goes_on(three_shards):
    a, b, c = make_devices("shard_1", [5, 5, 5])
    Shard.objects.filter(alias="shard_3").update(state="draining")
    Placement.objects.filter(device_id=c).update(pinned=True)
    plan = plan_of((a, "shard_1", "shard_3"), (b, "shard_1", "shard_2"), (c, "shard_1", "shard_2"))

    with exclusive_runner() as lock:
        run_row = execute(create_run(lock, kind="rebalance", cost="rows", plan=plan), lock)

    assert [entry["status"] for entry in run_row.plan] == [FAILED, MOVED, SKIPPED]
    assert "shard_3 is draining" in run_row.plan[0]["error"]
    assert "pinned" in run_row.plan[2]["error"]
    assert run_row.state == "finished"
    assert run_row.error.startswith("1 of 3 moves failed")
    assert placements() == {a: "shard_1", b: "shard_2", c: "shard_1"}


def test_status_shows_each_move_with_phase_rows_and_stall(three_shards, crowded):
    run_json("rebalance", "--max-moves", "2")

    text = run("rebalance", "--status")
    data = run_json("rebalance", "--status")

    (latest,) = data["runs"]
    assert latest["state"] == "finished" and not latest["interrupted"]
    assert [job["phase"] for job in latest["moves"]] == ["released", "released"]
    assert all(job["rows_moved"] > 0 and job["stall_ms"] >= 0 for job in latest["moves"])
    assert f"rebalance {latest['run']}: finished" in text
    assert "2 planned: 2 moved" in text
    for job in latest["moves"]:
        assert f"{job['stall_ms']:.0f} ms" in text and str(job["rows_moved"]) in text


class FailAfterSwitch(Observer):
    """Makes one device's move fail once the directory names the target, as a lost mover
    would (the run's other moves may run beside it)."""

    def __init__(self, device_id: int) -> None:
        self.device_id = device_id

    def move_started(self, entry):
        def on_phase(job: MoveJob) -> None:
            if job.phase == MoveJob.Phase.SWITCHED and job.device_id == self.device_id:
                raise MoveError("the mover lost its connection")

        return on_phase


def test_a_move_that_failed_after_the_switch_counts_as_moved_once_resumed(three_shards):
    a, b = make_devices("shard_1", [5, 5])
    plan = plan_of((a, "shard_1", "shard_2"), (b, "shard_1", "shard_3"))
    with exclusive_runner() as lock:
        run_row = execute(
            create_run(lock, kind="rebalance", cost="rows", plan=plan), lock, FailAfterSwitch(a)
        )
    assert [entry["status"] for entry in run_row.plan] == [FAILED, MOVED]
    assert run_row.moves.get(device_id=a).phase == "switched"

    result = run_json("rebalance", "--resume")

    assert [job["phase"] for job in result["resumed_jobs"]] == ["released"]
    run_row.refresh_from_db()
    assert [entry["status"] for entry in run_row.plan] == [MOVED, MOVED]
    assert run_row.error == "" and run_row.state == "finished"
    assert placements() == {a: "shard_2", b: "shard_3"}
