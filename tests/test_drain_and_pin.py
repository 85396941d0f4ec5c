"""Draining a shard until it is retired, and pinning devices, on three real shards."""

from datetime import timedelta

import pytest
from django.core.management.base import CommandError
from django.db import connections
from django.utils import timezone

from core.devices import create_device
from core.models import MoveJob, Placement, Rebalance, Shard
from routers.errors import UnknownShard
from routers.placement import choose_shard_for_new_device
from shards.models import Reading
from shards.moves.cleanup import clean_up_due_moves
from tests.factories import make_device
from tests.test_rebalance import make_devices, owned_readings, placements, run, run_json


def readings_left_on(alias: str) -> int:
    """Raw SQL: a retired shard has no routing any more (the test settings keep its alias)."""
    with connections[alias].cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {Reading._meta.db_table}")
        return cursor.fetchone()[0]


def state_of(alias: str) -> str:
    return Shard.objects.get(alias=alias).state


@pytest.fixture
def spread(three_shards) -> dict[str, list[int]]:
    """Three devices on shard_2 and two on shard_1, all with readings; shard_3 empty."""
    return {
        "shard_1": make_devices("shard_1", [40, 40]),
        "shard_2": make_devices("shard_2", [30, 20, 10]),
    }


def test_drain_moves_everything_off_and_retires_once_cleaned_up(three_shards, spread, settings):
    settings.MOVE_CLEANUP_GRACE_SECONDS = 3600
    before = owned_readings(three_shards)

    first = run_json("drain_shard", "shard_2")

    assert state_of("shard_2") == "draining"
    (drain,) = first["runs"]
    assert drain["kind"] == "drain:shard_2" and drain["state"] == "finished"
    assert drain["counts"]["moved"] == 3
    assert "shard_2" not in placements().values()
    assert owned_readings(three_shards) == before
    retire = first["retire"]
    assert not retire["retired"] and retire["wait_until"] is not None
    assert sorted(retire["cleanup_waiting"]) == sorted(job["job"] for job in drain["moves"])
    assert "run `drain_shard shard_2` again after that (or with --wait)" in retire["message"]
    # Draining: new devices and moves go elsewhere.
    assert choose_shard_for_new_device() != "shard_2"
    with pytest.raises(UnknownShard, match="draining"):
        create_device("SN-NEW", shard="shard_2")

    # The grace period passes and the beat task cleans up; running it again retires.
    MoveJob.objects.update(cleanup_after=timezone.now() - timedelta(seconds=1))
    assert len(clean_up_due_moves()) == 3
    second = run_json("drain_shard", "shard_2")

    assert second["runs"] == [] and second["retire"]["retired"]
    assert state_of("shard_2") == "retired"
    assert readings_left_on("shard_2") == 0
    assert owned_readings(["shard_1", "shard_3"]) == before
    assert "is retired" in run("drain_shard", "shard_2")


def test_drain_without_grace_period_cleans_up_and_retires_in_one_go(three_shards, spread, settings):
    settings.MOVE_CLEANUP_GRACE_SECONDS = 0
    out = run("drain_shard", "shard_2")
    assert "shard_2 is retired" in out
    assert state_of("shard_2") == "retired"
    assert set(MoveJob.objects.values_list("phase", flat=True)) == {"done"}
    assert readings_left_on("shard_2") == 0


def test_drain_wait_sleeps_until_it_can_retire(three_shards, spread, settings):
    settings.MOVE_CLEANUP_GRACE_SECONDS = 1
    result = run_json("drain_shard", "shard_2", "--wait")
    assert result["retire"]["retired"] and state_of("shard_2") == "retired"
    assert set(MoveJob.objects.values_list("phase", flat=True)) == {"done"}


def test_drain_goes_to_the_least_loaded_shards_by_weight(three_shards, spread):
    plan = run_json("drain_shard", "shard_2", "--dry-run")["plan"]
    # shard_1 holds 80 rows, shard_3 none: the largest goes to shard_3, and so on.
    assert [(m["cost"], m["target"]) for m in plan["moves"]] == [
        (30, "shard_3"),
        (20, "shard_3"),
        (10, "shard_3"),
    ]
    assert plan["loads_after"] == {"shard_1": 80, "shard_2": 0, "shard_3": 60}


def test_drain_dry_run_changes_nothing(three_shards, spread):
    where = placements()
    out = run("drain_shard", "shard_2", "--dry-run")
    assert "dry run: nothing was changed" in out
    assert state_of("shard_2") == "active"
    assert placements() == where
    assert not Rebalance.objects.exists() and not MoveJob.objects.exists()


def test_pinned_devices_block_a_drain(three_shards, spread):
    pinned = make_device(shard="shard_2", pin=True).device
    where = placements()

    with pytest.raises(CommandError, match=f"holds 1 pinned devices: {pinned.serial}"):
        run("drain_shard", "shard_2")

    assert state_of("shard_2") == "active"
    assert placements() == where and not MoveJob.objects.exists()
    dry = run("drain_shard", "shard_2", "--dry-run")
    assert f"pinned, stays: {pinned.serial}" in dry and "a drain would refuse" in dry


def test_include_pinned_moves_pinned_devices_and_keeps_them_pinned(three_shards, spread, settings):
    settings.MOVE_CLEANUP_GRACE_SECONDS = 0
    pinned = make_device(shard="shard_2", pin=True).device

    result = run_json("drain_shard", "shard_2", "--include-pinned")

    placement = Placement.objects.get(device=pinned)
    assert placement.shard_id != "shard_2" and placement.pinned
    assert result["retire"]["retired"]


def test_an_interrupted_drain_is_continued_by_running_it_again(three_shards, spread, settings):
    settings.MOVE_CLEANUP_GRACE_SECONDS = 0
    plan = run_json("drain_shard", "shard_2", "--dry-run")["plan"]
    Shard.objects.filter(alias="shard_2").update(state="draining")
    entries = [{**m, "status": "pending", "job": None, "error": ""} for m in plan["moves"]]
    dead = Rebalance.objects.create(
        kind="drain:shard_2", plan=entries, loads_before=plan["loads_before"]
    )
    with pytest.raises(CommandError, match=f"drain:shard_2 {dead.pk} was interrupted"):
        run("rebalance")

    result = run_json("drain_shard", "shard_2")

    (continued,) = result["runs"]  # nothing left to plan afresh
    assert continued["run"] == dead.pk and continued["counts"]["moved"] == 3
    assert result["retire"]["retired"]


def test_pin_device_with_shard_moves_it_there_and_pins_it(three_shards, spread):
    device = spread["shard_1"][0]
    before = owned_readings(three_shards)

    result = run_json("pin_device", str(device), "--shard", "shard_3")

    assert result["shard"] == "shard_3" and result["pinned"]
    assert result["move"]["phase"] == "released" and result["move"]["rows_moved"] == 40
    assert Placement.objects.get(device_id=device).pinned
    assert placements()[device] == "shard_3"
    assert owned_readings(three_shards) == before
    # Already there: pinned again without a move.
    again = run_json("pin_device", str(device), "--shard", "shard_3")
    assert again["move"] is None and MoveJob.objects.count() == 1


def test_pin_keeps_a_device_out_of_the_next_rebalance(three_shards):
    devices = make_devices("shard_1", [10] * 4)
    serial = Placement.objects.get(device_id=devices[3]).device.serial
    assert "pinned on shard_1" in run("pin_device", serial)

    result = run_json("rebalance", "--cost", "devices")

    assert devices[3] not in [entry["device"] for entry in result["run"]["plan"]]
    assert placements()[devices[3]] == "shard_1"
    assert "no longer pinned" in run("pin_device", serial, "--unpin")
    assert not Placement.objects.get(device_id=devices[3]).pinned


def test_dedicate_gives_the_shard_to_the_device_and_rebalance_empties_it(three_shards):
    make_devices("shard_1", [10, 10])
    others = make_devices("shard_3", [10, 10])
    (star,) = make_devices("shard_3", [50])

    result = run_json("pin_device", str(star), "--dedicate")

    assert result["dedicated"] and result["weight"] == 0 and result["shard"] == "shard_3"
    assert result["others_to_move"] == 2
    assert Shard.objects.get(alias="shard_3").weight == 0
    assert choose_shard_for_new_device() != "shard_3"

    rebalanced = run_json("rebalance")

    moved = {entry["device"]: entry["target"] for entry in rebalanced["run"]["plan"]}
    assert set(others) <= set(moved) and star not in moved
    assert "shard_3" not in moved.values()
    assert [d for d, alias in placements().items() if alias == "shard_3"] == [star]


def test_pin_device_refusals(three_shards, spread):
    device = str(spread["shard_1"][0])
    with pytest.raises(CommandError, match="no device with serial or id"):
        run("pin_device", "SN-NOPE")
    with pytest.raises(CommandError, match="--unpin takes no --shard"):
        run("pin_device", device, "--unpin", "--shard", "shard_2")
    Shard.objects.filter(alias="shard_3").update(state="draining")
    with pytest.raises(CommandError, match="shard_3 is draining"):
        run("pin_device", device, "--shard", "shard_3")
    assert not Placement.objects.get(device_id=device).pinned  # the pin was put back
