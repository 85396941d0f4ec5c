"""Planning moves between shards: a pure function of shards, devices and their costs.

Pure so it can be tested with tables and shown as a dry run: nothing here
reads a database. Each active shard of weight w should hold `pool * w / W`
of the cost (W: the weights of the active shards; pool: the cost that can
still go anywhere). Draining and weight-0 shards should hold nothing movable,
only what cannot leave them (pinned devices, devices already being moved).
The imbalance is the cost on the wrong shard: half the sum of |load - target|.

A rebalance is greedy: from the most over-loaded shard (load relative to its
target) to the most under-loaded one, move the device that lowers the
imbalance most, as long as it lowers it by at least `min_improvement` of the
total cost; each device moves at most once per plan. A drain moves every
device off one shard, largest first, each to the active shard that is least
loaded for its weight once the device is there.
"""

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

ACTIVE = "active"
DRAINING = "draining"
# Costs are integers; anything smaller than this is no change at all.
EPSILON = 1e-9


@dataclass(frozen=True)
class ShardSpec:
    """What the planner knows of a shard."""

    alias: str
    weight: int
    state: str = ACTIVE

    @property
    def receives(self) -> bool:
        """Devices may be moved here: active, with a positive weight."""
        return self.state == ACTIVE and self.weight > 0


@dataclass(frozen=True)
class DeviceSpec:
    """What the planner knows of a device: where it is, what it costs, whether it may move."""

    device_id: int
    shard: str
    cost: int
    pinned: bool = False
    busy: bool = False  # a move job is in flight for it: it stays where it is
    serial: str = ""

    @property
    def free(self) -> bool:
        return not self.pinned and not self.busy

    def as_json(self) -> dict[str, Any]:
        return {
            "device": self.device_id,
            "serial": self.serial,
            "shard": self.shard,
            "cost": self.cost,
            "pinned": self.pinned,
            "busy": self.busy,
        }


@dataclass(frozen=True)
class PlannedMove:
    device_id: int
    serial: str
    source: str
    target: str
    cost: int
    pinned: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "device": self.device_id,
            "serial": self.serial,
            "source": self.source,
            "target": self.target,
            "cost": self.cost,
            "pinned": self.pinned,
        }


@dataclass
class Plan:
    """The moves in order, the loads they lead to, and why planning stopped."""

    moves: list[PlannedMove]
    loads_before: dict[str, int]
    loads_after: dict[str, int]
    targets: dict[str, float]
    total: int
    stop_reason: str
    blocked: list[DeviceSpec] = field(default_factory=list)  # pinned devices a drain must leave
    busy: list[DeviceSpec] = field(default_factory=list)  # devices in flight a drain must leave

    @property
    def imbalance_before(self) -> float:
        return imbalance(self.loads_before, self.targets)

    @property
    def imbalance_after(self) -> float:
        return imbalance(self.loads_after, self.targets)

    def as_json(self) -> dict[str, Any]:
        return {
            "moves": [move.as_json() for move in self.moves],
            "loads_before": self.loads_before,
            "loads_after": self.loads_after,
            "targets": {alias: round(value, 1) for alias, value in self.targets.items()},
            "total": self.total,
            "imbalance_before": round(self.imbalance_before, 1),
            "imbalance_after": round(self.imbalance_after, 1),
            "stop_reason": self.stop_reason,
            "blocked": [device.as_json() for device in self.blocked],
            "busy": [device.as_json() for device in self.busy],
        }


def imbalance(loads: dict[str, int], targets: dict[str, float]) -> float:
    """The cost that sits on the wrong shard: half the distance from every target."""
    return sum(abs(loads[alias] - targets[alias]) for alias in targets) / 2


def shard_loads(shards: Iterable[ShardSpec], devices: Iterable[DeviceSpec]) -> dict[str, int]:
    loads = {shard.alias: 0 for shard in shards}
    for device in devices:
        if device.shard in loads:
            loads[device.shard] += device.cost
    return loads


def shard_targets(
    shards: list[ShardSpec],
    devices: list[DeviceSpec],
    movable: Callable[[DeviceSpec], bool] = lambda device: device.free,
) -> dict[str, float]:
    """The load each shard should carry: a share of the pool by weight, or what is stuck there."""
    receivers = {shard.alias: shard.weight for shard in shards if shard.receives}
    stuck = {shard.alias: 0 for shard in shards}
    for device in devices:
        if device.shard in stuck and device.shard not in receivers and not movable(device):
            stuck[device.shard] += device.cost
    total = sum(device.cost for device in devices if device.shard in stuck)
    pool = total - sum(stuck.values())
    weights = sum(receivers.values())
    return {
        shard.alias: pool * shard.weight / weights
        if shard.alias in receivers
        else stuck[shard.alias]
        for shard in shards
    }


def _gain(cost: int, over: float, under: float) -> float:
    """How much moving `cost` from a shard `over` its target to one `under` it lowers imbalance."""
    return (over + under - abs(over - cost) - abs(under - cost)) / 2


class _Pool:
    """The free devices of one shard, sorted by cost, for finding the best one to move."""

    def __init__(self, devices: list[DeviceSpec]) -> None:
        self.devices = sorted(devices, key=lambda device: (device.cost, device.device_id))
        self.costs = [device.cost for device in self.devices]

    def __bool__(self) -> bool:
        return bool(self.devices)

    def best_for(self, over: float, under: float) -> tuple[DeviceSpec | None, float]:
        """The device whose move gains most (ties: the cheaper, then the lower id)."""
        fits = bisect_right(self.costs, min(over, under))
        candidates = []
        if fits > 0:  # the largest that fits: gains its whole cost
            candidates.append(self.devices[bisect_left(self.costs, self.costs[fits - 1])])
        if fits < len(self.devices):  # the smallest that overshoots: may gain more
            candidates.append(self.devices[fits])
        best, best_gain = None, 0.0
        for device in candidates:
            gain = _gain(device.cost, over, under)
            if gain > best_gain + EPSILON:
                best, best_gain = device, gain
        return best, best_gain

    def remove(self, device: DeviceSpec) -> None:
        index = self.devices.index(device)
        del self.devices[index]
        del self.costs[index]


def _relative(load: float, target: float) -> float:
    """Load as a multiple of the target; any load where none is wanted ranks first."""
    if target > EPSILON:
        return load / target
    return math.inf if load > EPSILON else 1.0


def plan_rebalance(
    shards: list[ShardSpec],
    devices: list[DeviceSpec],
    *,
    min_improvement: float = 0.002,
    max_moves: int | None = None,
) -> Plan:
    """Greedy moves from over- to under-loaded shards; see the module docstring."""
    known = {shard.alias for shard in shards}
    devices = [device for device in devices if device.shard in known]
    targets = shard_targets(shards, devices)
    loads_before = shard_loads(shards, devices)
    loads = dict(loads_before)
    total = sum(device.cost for device in devices)
    threshold = max(min_improvement, 0.0) * total
    pools = {
        shard.alias: _Pool([d for d in devices if d.shard == shard.alias and d.free])
        for shard in shards
    }
    moves: list[PlannedMove] = []
    while True:
        if max_moves is not None and len(moves) >= max_moves:
            reason = f"reached the limit of {max_moves} moves"
            break
        over = sorted(
            (s for s in shards if loads[s.alias] - targets[s.alias] > EPSILON and pools[s.alias]),
            key=lambda s: (-_relative(loads[s.alias], targets[s.alias]), s.alias),
        )
        under = sorted(
            (s for s in shards if s.receives and loads[s.alias] - targets[s.alias] < -EPSILON),
            key=lambda s: (_relative(loads[s.alias], targets[s.alias]), s.alias),
        )
        choice, best_rejected = None, 0.0
        for source in over:
            for target in under:
                device, gain = pools[source.alias].best_for(
                    loads[source.alias] - targets[source.alias],
                    targets[target.alias] - loads[target.alias],
                )
                if device is not None and gain >= threshold:
                    choice = device, target.alias
                    break
                best_rejected = max(best_rejected, gain)
            if choice:
                break
        if choice is None:
            reason = _why_stopped(shards, loads, targets, total, best_rejected, min_improvement)
            break
        device, target_alias = choice
        pools[device.shard].remove(device)
        loads[device.shard] -= device.cost
        loads[target_alias] += device.cost
        moves.append(
            PlannedMove(device.device_id, device.serial, device.shard, target_alias, device.cost)
        )
    return Plan(moves, loads_before, loads, targets, total, reason)


def _why_stopped(
    shards: list[ShardSpec],
    loads: dict[str, int],
    targets: dict[str, float],
    total: int,
    best_rejected: float,
    min_improvement: float,
) -> str:
    if not any(shard.receives for shard in shards):
        return "no active shard with a positive weight to move devices to"
    if total == 0:
        return "nothing to move: the devices cost nothing by this measure"
    if imbalance(loads, targets) <= EPSILON:
        return "balanced: every shard holds its share"
    if best_rejected > EPSILON:
        return (
            f"the best remaining move would lower the imbalance by"
            f" {best_rejected / total:.2%} of the total cost, less than the minimum"
            f" improvement of {min_improvement:.2%}"
        )
    return (
        "no single move lowers the imbalance any more: the devices left are pinned,"
        " being moved, or larger than the gaps"
    )


def plan_drain(
    shards: list[ShardSpec],
    devices: list[DeviceSpec],
    alias: str,
    *,
    include_pinned: bool = False,
) -> Plan:
    """Every device off `alias` (treated as draining), largest first, to the least-loaded shard.

    Pinned devices are listed in `blocked` unless `include_pinned`; devices with a
    move in flight are listed in `busy`. Neither is planned.
    """
    shards = [replace(s, state=DRAINING) if s.alias == alias else s for s in shards]
    known = {shard.alias for shard in shards}
    devices = [device for device in devices if device.shard in known]

    def movable(device: DeviceSpec) -> bool:
        return device.free or (
            include_pinned and device.shard == alias and device.pinned and not device.busy
        )

    targets = shard_targets(shards, devices, movable)
    loads_before = shard_loads(shards, devices)
    loads = dict(loads_before)
    mine = [device for device in devices if device.shard == alias]
    leaving = sorted(filter(movable, mine), key=lambda d: (-d.cost, d.device_id))
    blocked = [d for d in mine if d.pinned and not d.busy and not include_pinned]
    busy = [d for d in mine if d.busy]
    receivers = [shard for shard in shards if shard.receives]
    moves: list[PlannedMove] = []
    if not receivers:
        leaving = []
    for device in leaving:
        target = min(receivers, key=lambda s: ((loads[s.alias] + device.cost) / s.weight, s.alias))
        loads[alias] -= device.cost
        loads[target.alias] += device.cost
        moves.append(
            PlannedMove(
                device.device_id, device.serial, alias, target.alias, device.cost, device.pinned
            )
        )
    if not receivers:
        reason = "no active shard with a positive weight to move devices to"
    elif blocked or busy:
        reason = f"{len(blocked) + len(busy)} devices cannot leave {alias} now (pinned or moving)"
    else:
        reason = f"every device leaves {alias}"
    total = sum(device.cost for device in devices)
    return Plan(moves, loads_before, loads, targets, total, reason, blocked, busy)
