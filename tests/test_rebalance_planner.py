"""The planner as tables: shards and devices in, moves and loads out. No database.

A fleet is written compactly: `{"a:100": [10, "5p", "3b"]}` is shard a of weight
100 (add ":draining" for its state) holding devices of cost 10, 5 (pinned) and 3
(busy: a move is in flight). Devices are numbered in the order written.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shards.rebalance.planner import (
    DeviceSpec,
    ShardSpec,
    imbalance,
    plan_drain,
    plan_rebalance,
)


def fleet(spec: dict[str, list[int | str]]) -> tuple[list[ShardSpec], list[DeviceSpec]]:
    shards, devices = [], []
    for key, costs in spec.items():
        alias, weight, *state = key.split(":")
        shards.append(ShardSpec(alias, int(weight), state[0] if state else "active"))
        for cost in costs:
            text = str(cost)
            number = len(devices) + 1
            devices.append(
                DeviceSpec(
                    device_id=number,
                    shard=alias,
                    cost=int(text.rstrip("pb")),
                    pinned="p" in text,
                    busy="b" in text,
                    serial=f"SN-{number}",
                )
            )
    return shards, devices


def ten(n: int) -> list[int]:
    return [10] * n


REBALANCES = [
    # (why, fleet, options, loads after)
    ("weights respected", {"a:100": [1] * 30, "b:200": []}, {}, {"a": 10, "b": 20}),
    ("even split", {"a:100": ten(9), "b:100": [], "c:100": []}, {}, {"a": 30, "b": 30, "c": 30}),
    ("already balanced", {"a:100": ten(3), "b:100": ten(3)}, {}, {"a": 30, "b": 30}),
    ("pinned stay", {"a:100": ["50p", "40p", 10], "b:100": []}, {}, {"a": 90, "b": 10}),
    ("busy stay", {"a:100": ["60b", 20], "b:100": []}, {}, {"a": 60, "b": 20}),
    ("tiny moves skipped", {"a:1": [100, 1, 1], "b:1": [100], "c:1": [100]}, {}, None),
    (
        "tiny moves allowed at 0",
        {"a:1": [100, 1, 1], "b:1": [100], "c:1": [100]},
        {"min_improvement": 0},
        {"a": 101, "b": 101, "c": 100},
    ),
    ("max moves", {"a:100": ten(9), "b:100": [], "c:100": []}, {"max_moves": 2}, None),
    (
        "weight 0 sheds unpinned",
        {"a:0": ["5p", 3, 3], "b:100": [10], "c:100": [10]},
        {},
        {"a": 5, "b": 13, "c": 13},
    ),
    (
        "draining sheds, never receives",
        {"a:100:draining": [], "b:100": ten(2), "c:100": ten(4)},
        {},
        {"a": 0, "b": 30, "c": 30},
    ),
    (
        "draining emptied",
        {"a:100:draining": [2, 2, "4p"], "b:100": [10], "c:100": [10]},
        {},
        {"a": 4, "b": 12, "c": 12},
    ),
    ("largest that fits first", {"a:1": [30, 20, 10], "b:1": []}, {}, {"a": 30, "b": 30}),
    ("no receivers", {"a:0": ten(2), "b:100:draining": []}, {}, {"a": 20, "b": 0}),
]


@pytest.mark.parametrize(
    ("spec", "options", "after"),
    [case[1:] for case in REBALANCES],
    ids=[case[0] for case in REBALANCES],
)
def test_rebalance_table(spec, options, after):
    shards, devices = fleet(spec)
    plan = plan_rebalance(shards, devices, **options)
    if after is not None:
        assert plan.loads_after == after
    by_id = {device.device_id: device for device in devices}
    moved = [by_id[move.device_id] for move in plan.moves]
    assert not any(device.pinned or device.busy for device in moved)
    assert len({device.device_id for device in moved}) == len(moved)  # each moves once
    receivers = {shard.alias for shard in shards if shard.receives}
    assert {move.target for move in plan.moves} <= receivers
    assert plan.imbalance_after <= plan.imbalance_before


def test_tiny_moves_below_the_threshold_are_skipped_and_the_reason_says_so():
    shards, devices = fleet({"a:1": [100, 1, 1], "b:1": [100], "c:1": [100]})
    plan = plan_rebalance(shards, devices, min_improvement=0.02)
    assert plan.moves == []
    assert "less than the minimum improvement of 2.00%" in plan.stop_reason
    assert "0.22%" in plan.stop_reason


def test_max_moves_stops_early_in_order_of_benefit():
    shards, devices = fleet({"a:100": ten(9), "b:100": [], "c:100": []})
    plan = plan_rebalance(shards, devices, max_moves=2)
    assert [(m.source, m.target) for m in plan.moves] == [("a", "b"), ("a", "c")]
    assert plan.loads_after == {"a": 70, "b": 10, "c": 10}
    assert plan.stop_reason == "reached the limit of 2 moves"


def test_targets_follow_weights_and_what_is_stuck():
    shards, devices = fleet({"a:0": ["5p", 3], "b:100": [10], "c:300": [2]})
    plan = plan_rebalance(shards, devices)
    assert plan.targets == {"a": 5, "b": 15 / 4, "c": 45 / 4}
    assert plan.total == 20
    assert imbalance(plan.loads_before, plan.targets) == pytest.approx(plan.imbalance_before)


def test_balanced_fleet_says_so():
    shards, devices = fleet({"a:100": ten(3), "b:100": ten(3)})
    plan = plan_rebalance(shards, devices)
    assert plan.moves == []
    assert plan.stop_reason.startswith("balanced")


def test_plan_as_json_lists_moves_and_loads():
    shards, devices = fleet({"a:100": ten(2), "b:100": []})
    data = plan_rebalance(shards, devices).as_json()
    assert data["moves"] == [
        {"device": 1, "serial": "SN-1", "source": "a", "target": "b", "cost": 10, "pinned": False}
    ]
    assert data["loads_before"] == {"a": 20, "b": 0}
    assert data["loads_after"] == {"a": 10, "b": 10}
    assert data["imbalance_before"] == 10
    assert data["imbalance_after"] == 0


DRAINS = [
    # (why, fleet, include_pinned, moves as (cost, target), blocked costs)
    (
        "largest first to least loaded by weight",
        {"a:100": [10, 8, 5, 3], "b:100": [], "c:200": []},
        False,
        [(10, "c"), (8, "b"), (5, "c"), (3, "c")],
        [],
    ),
    ("pinned block", {"a:100": [10, "5p"], "b:100": []}, False, [(10, "b")], [5]),
    (
        "pinned move with include_pinned",
        {"a:100": [10, "5p"], "b:100": []},
        True,
        [(10, "b"), (5, "b")],
        [],
    ),
    (
        "never to draining or weight 0",
        {"a:100": ten(3), "b:100:draining": [], "c:0": [], "d:100": [50]},
        False,
        [(10, "d"), (10, "d"), (10, "d")],
        [],
    ),
    ("busy left alone", {"a:100": ["7b", 3], "b:100": []}, False, [(3, "b")], []),
]


@pytest.mark.parametrize(
    ("spec", "include_pinned", "moves", "blocked"),
    [case[1:] for case in DRAINS],
    ids=[case[0] for case in DRAINS],
)
def test_drain_table(spec, include_pinned, moves, blocked):
    shards, devices = fleet(spec)
    plan = plan_drain(shards, devices, "a", include_pinned=include_pinned)
    assert [(m.cost, m.target) for m in plan.moves] == moves
    assert [device.cost for device in plan.blocked] == blocked
    assert all(move.source == "a" for move in plan.moves)
    assert plan.targets["a"] == sum(d.cost for d in plan.blocked + plan.busy)


def test_drain_moves_of_pinned_devices_say_so():
    shards, devices = fleet({"a:100": ["5p"], "b:100": []})
    plan = plan_drain(shards, devices, "a", include_pinned=True)
    assert [move.pinned for move in plan.moves] == [True]
    assert plan.loads_after == {"a": 0, "b": 5}


def test_drain_without_receivers_plans_nothing():
    shards, devices = fleet({"a:100": ten(2), "b:0": []})
    plan = plan_drain(shards, devices, "a")
    assert plan.moves == []
    assert "no active shard" in plan.stop_reason


fleets = st.dictionaries(
    keys=st.sampled_from(["a", "b", "c", "d"]),
    values=st.tuples(
        st.sampled_from([0, 50, 100, 200]),
        st.sampled_from(["active", "active", "draining"]),
        st.lists(st.tuples(st.integers(0, 500), st.booleans(), st.booleans()), max_size=12),
    ),
    min_size=1,
)


@given(fleets, st.sampled_from([0.0, 0.01, 0.05]))
def test_any_plan_keeps_the_rules(spec, min_improvement):
    shards, devices = [], []
    for alias, (weight, state, items) in sorted(spec.items()):
        shards.append(ShardSpec(alias, weight, state))
        for cost, pinned, busy in items:
            devices.append(DeviceSpec(len(devices) + 1, alias, cost, pinned, busy))
    plan = plan_rebalance(shards, devices, min_improvement=min_improvement)
    by_id = {device.device_id: device for device in devices}
    loads = dict(plan.loads_before)
    for move in plan.moves:
        device = by_id[move.device_id]
        assert device.free and device.shard == move.source
        assert move.target != move.source
        assert next(s for s in shards if s.alias == move.target).receives
        loads[move.source] -= move.cost
        loads[move.target] += move.cost
    assert loads == plan.loads_after
    assert len({move.device_id for move in plan.moves}) == len(plan.moves)
    assert sum(plan.loads_after.values()) == plan.total
    assert plan.imbalance_after <= plan.imbalance_before + 1e-6
