"""Shard operations on a real cluster while devices keep uploading through HAProxy.

A shard is added (a new PostgreSQL instance) and a rebalance moves devices onto
it; a rebalance spreads heavy devices over three shards; a shard is drained and
retired. Meanwhile every device uploads continuously and retries like a real
one. Afterwards: no upload failed, every acknowledged reading is stored exactly
once on the device's current shard only (old copies cleaned up), and the moves
were verified. The tests run in this order and build on each other's shards.
"""

import json
import time

import pytest

from shards.ids import shard_number_of
from tests.e2e.conftest import E2ECluster, enroll_fleet, report
from tests.e2e.device_load import DeviceLoad, DeviceRecord

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WARM_UP = 2.0
# The import-lag throttle off: the e2e tests before these leave the cluster's one worker
# thousands of imports behind on a 2-CPU machine, and a rebalance that waits for the lag
# to clear is the throttle working (tests/test_rebalance_parallel.py), not what is tested
# here: moves under load lose and double nothing.
NO_LAG_THROTTLE = ("--max-import-lag", "0")
CONFIGURED = {"shard_1", "shard_2"}
BULK_BATCHES = 2
BULK_READINGS = 5000


@pytest.fixture
def uploaders(e2e_cluster: E2ECluster, request) -> list[DeviceRecord]:
    """Six freshly enrolled devices, wherever the cluster placed them."""
    return enroll_fleet(e2e_cluster, f"{request.node.name[:40]}-{time.time_ns()}", 6)


def no_failures_and_stored_once(
    cluster: E2ECluster, load: DeviceLoad, devices: list[DeviceRecord]
) -> dict[str, int]:
    """No upload failed, and every acknowledged reading is stored once, on its shard only."""
    assert load.failures() == [], load.failures()[:5]
    assert load.unexpected == []
    return cluster.assert_exactly_once(devices)


def moves_of(cluster: E2ECluster, device_ids: set[int]) -> list[tuple]:
    return cluster.directory(
        "SELECT device_id, source_id, target_id, phase, stall_ms,"
        " (verification->>'ok')::boolean FROM core_movejob"
        " WHERE device_id = ANY(%s) ORDER BY id",
        [sorted(device_ids)],
    )


def assert_moves_clean(moves: list[tuple]) -> list[float]:
    """Every move finished (cleaned up) with a verified copy; returns the stalls in ms."""
    assert moves, "no device was moved"
    for device_id, source, target, phase, _stall, verified in moves:
        assert phase == "done", f"move of {device_id} {source}->{target} ended {phase}"
        assert verified, f"move of {device_id} {source}->{target} was not verified"
    return [stall for *_, stall, _ in moves]


def set_pins(
    cluster: E2ECluster, *, pinned: bool, exclude: set[int] = frozenset(), only: list | None = None
) -> list[int]:
    """Pin (or unpin) devices straight in the directory; returns the ids changed."""
    rows = cluster.directory(
        "UPDATE core_placement SET pinned = %s WHERE pinned <> %s"
        " AND NOT device_id = ANY(%s) AND (%s OR device_id = ANY(%s)) RETURNING device_id",
        [pinned, pinned, sorted(exclude), only is None, only or []],
    )
    return [row[0] for row in rows]


def set_weight(cluster: E2ECluster, alias: str, weight: int) -> None:
    cluster.directory("UPDATE core_shard SET weight = %s WHERE alias = %s", [weight, alias])


def active_shards(cluster: E2ECluster) -> set[str]:
    rows = cluster.directory("SELECT alias FROM core_shard WHERE state = 'active'")
    return {row[0] for row in rows}


def add_shard(cluster: E2ECluster) -> str:
    """Start and register the next shard_N (an earlier run may have retired shard_3)."""
    before = active_shards(cluster)
    cluster.tool("add-shard")
    cluster.reload_info()
    (added,) = active_shards(cluster) - before
    assert added in cluster.info["shards"]
    return added


def extra_shard(cluster: E2ECluster) -> str:
    """The active shard an earlier test added, or a new one when run alone."""
    extra = sorted(active_shards(cluster) - CONFIGURED)
    return extra[-1] if extra else add_shard(cluster)


def shard_number(cluster: E2ECluster, alias: str) -> int:
    return cluster.directory("SELECT number FROM core_shard WHERE alias = %s", [alias])[0][0]


def imbalance(cluster: E2ECluster) -> float:
    """Rows on the wrong shard that a rebalance could still put right, by a dry-run plan.

    Measured as what the plan would improve, not the imbalance itself: devices that other
    tests left (pinned here, some heavy) add an imbalance no move of ours can change.
    """
    plan = json.loads(cluster.manage("rebalance", "--cost", "rows", "--dry-run", "--json"))
    return plan["plan"]["imbalance_before"] - plan["plan"]["imbalance_after"]


def test_add_shard_under_load_and_rebalance_onto_it(e2e_cluster: E2ECluster, uploaders, capsys):
    devices = uploaders
    ids = {d.device_id for d in devices}
    # Only this test's devices (uploading) may move: every other device is pinned for now.
    pinned = set_pins(e2e_cluster, exclude=ids, pinned=True)
    new_shard: str | None = None
    load = DeviceLoad(e2e_cluster.url, devices).start()
    try:
        time.sleep(WARM_UP)
        new_shard = add_shard(e2e_cluster)
        # A big new machine: ten times the weight, so most movable devices belong there
        # whatever earlier tests left on the other shards.
        set_weight(e2e_cluster, new_shard, 1000)
        e2e_cluster.manage("rebalance", "--cost", "devices", *NO_LAG_THROTTLE)
        time.sleep(WARM_UP)  # devices keep reporting after the moves
    finally:
        load.stop()
        set_pins(e2e_cluster, only=pinned, pinned=False)
        if new_shard is not None:
            set_weight(e2e_cluster, new_shard, 100)
    e2e_cluster.clean_up_old_copies()

    placement = e2e_cluster.placements()
    on_new = [device_id for device_id, alias in placement.items() if alias == new_shard]
    assert len(ids & set(on_new)) >= 2, f"the rebalance moved {on_new} onto {new_shard}"
    # The app nodes used the new shard without a restart: uploads were staged there,
    # with ids minted by it (the shard number is part of every id).
    number = shard_number(e2e_cluster, new_shard)
    minted_there = [
        upload_id
        for device in devices
        if device.device_id in on_new
        for upload_id in device.acknowledged.values()
        if shard_number_of(upload_id) == number
    ]
    assert minted_there, f"no acknowledged upload was staged on {new_shard}"
    summary = no_failures_and_stored_once(e2e_cluster, load, devices)
    report(
        capsys,
        f"\n[add shard + rebalance] {len(on_new)} devices now on {new_shard}, of them"
        f" {len(ids & set(on_new))} under load, {len(minted_there)} uploads staged there;"
        f" {len(load.attempts)} uploads, 0 failed;"
        f" readings acknowledged {summary['acknowledged']} = stored {summary['stored']}",
    )


def test_rebalance_between_three_shards_under_load(e2e_cluster: E2ECluster, uploaders, capsys):
    extra_shard(e2e_cluster)  # three shards: the one the test above added
    devices = uploaders
    shards_used = set(e2e_cluster.placements()[d.device_id] for d in devices)
    ids = {d.device_id for d in devices}
    for device in devices:
        e2e_cluster.upload_bulk(device, BULK_BATCHES, BULK_READINGS)
    # Only this test's devices (uploading) may move: every other device is pinned for now.
    pinned = set_pins(e2e_cluster, exclude=ids, pinned=True)
    load = DeviceLoad(e2e_cluster.url, devices).start()
    try:
        time.sleep(WARM_UP)
        # Pile the heavy devices onto shard_1, then let the rebalance spread them.
        for device in devices:
            if e2e_cluster.placements()[device.device_id] != "shard_1":
                e2e_cluster.manage("move_device", str(device.device_id), "shard_1")
        assert {e2e_cluster.placements()[i] for i in ids} == {"shard_1"}
        before = imbalance(e2e_cluster)
        e2e_cluster.manage("rebalance", "--cost", "rows", *NO_LAG_THROTTLE)
        after = imbalance(e2e_cluster)
        time.sleep(WARM_UP)
    finally:
        load.stop()
        set_pins(e2e_cluster, only=pinned, pinned=False)
    e2e_cluster.clean_up_old_copies()

    placement = e2e_cluster.placements()
    spread = {placement[i] for i in ids}
    moved_off = [i for i in ids if placement[i] != "shard_1"]
    assert len(moved_off) >= 2, f"the rebalance moved {moved_off} off shard_1"
    # Uploads keep adding rows, so "balanced" is measured, not exact: the rows on the
    # wrong shard (by a fresh plan) fell to a fraction of what they were.
    assert after < before / 4, f"rows on the wrong shard: {before:.0f} before, {after:.0f} after"
    summary = no_failures_and_stored_once(e2e_cluster, load, devices)
    stalls = assert_moves_clean(moves_of(e2e_cluster, ids))
    report(
        capsys,
        f"\n[rebalance, 3 shards] {len(stalls)} moves of {len(ids)} heavy devices under load"
        f" (from {sorted(shards_used)} onto shard_1, then by the rebalance onto"
        f" {sorted(spread - {'shard_1'})}); rows on the wrong shard {before:.0f} ->"
        f" {after:.0f}; writers held max {max(stalls):.0f} ms;"
        f" {len(load.attempts)} uploads, 0 failed; readings acknowledged"
        f" {summary['acknowledged']} = stored {summary['stored']}",
    )


def test_drain_shard_under_load(e2e_cluster: E2ECluster, uploaders, capsys):
    drained = extra_shard(e2e_cluster)
    devices = uploaders
    ids = {d.device_id for d in devices}
    load = DeviceLoad(e2e_cluster.url, devices).start()
    try:
        time.sleep(WARM_UP)
        for device in devices:  # make sure the drain has devices under load to move
            if e2e_cluster.placements()[device.device_id] != drained:
                e2e_cluster.manage("move_device", str(device.device_id), drained)
                break
        e2e_cluster.manage("drain_shard", drained, "--wait", *NO_LAG_THROTTLE)
        time.sleep(WARM_UP)
    finally:
        load.stop()
    e2e_cluster.clean_up_old_copies()

    placement = e2e_cluster.placements()
    assert drained not in placement.values()
    state = e2e_cluster.directory("SELECT state FROM core_shard WHERE alias = %s", [drained])
    assert state == [("retired",)]
    summary = no_failures_and_stored_once(e2e_cluster, load, devices)
    report(
        capsys,
        f"\n[drain {drained}] retired with {len(ids)} devices uploading;"
        f" {len(load.attempts)} uploads, 0 failed; readings acknowledged"
        f" {summary['acknowledged']} = stored {summary['stored']}",
    )
