"""What each device costs its shard, read from every shard in parallel, for the planner.

Only devices a shard owns count (fence active, copying or fenced): a moved
device's rows linger on its old shard until cleanup and must not count twice.
A device with a move in flight, or whose placement disagrees with the shard
that owns it, is marked busy: the planner leaves it where it is.
"""

from collections.abc import Callable

from django.db import connections

from core.models import MoveJob, Placement, Rebalance, Shard
from routers.fanout import fan_out
from shards.fence import HELD_DEVICES_SQL
from shards.moves.tables import device_tables
from shards.rebalance.planner import DeviceSpec, ShardSpec

COSTS = tuple(Rebalance.Cost.values)
_OWNED = HELD_DEVICES_SQL
_PER_DEVICE = {
    "rows": "SELECT device_id, count(*) FROM {table} t WHERE device_id IN ({owned})"
    " GROUP BY device_id",
    "bytes": "SELECT device_id, sum(pg_column_size(t.*)) FROM {table} t"
    " WHERE device_id IN ({owned}) GROUP BY device_id",
}


def shard_device_costs(alias: str, cost: str) -> dict[int, int]:
    """{device id: cost} for every device `alias` owns (devices without rows cost 0)."""
    if cost not in COSTS:
        raise ValueError(f"unknown cost {cost!r}; one of {', '.join(COSTS)}")
    with connections[alias].cursor() as cursor:
        cursor.execute(_OWNED)
        owned = {row[0]: 0 for row in cursor.fetchall()}
        if cost == "devices":
            return dict.fromkeys(owned, 1)
        for table in device_tables():
            cursor.execute(_PER_DEVICE[cost].format(table=table.name, owned=_OWNED))
            for device_id, amount in cursor.fetchall():
                owned[device_id] = owned.get(device_id, 0) + int(amount)
    return owned


def _per_shard(cost: str) -> Callable[[str], dict[int, int]]:
    return lambda alias: shard_device_costs(alias, cost)


def live_shards() -> list[ShardSpec]:
    """Every shard that can still hold devices (not retired), from the directory."""
    rows = Shard.objects.exclude(state=Shard.State.RETIRED).values_list("alias", "weight", "state")
    return [ShardSpec(alias, weight, state) for alias, weight, state in rows]


def gather_fleet(cost: str) -> tuple[list[ShardSpec], list[DeviceSpec]]:
    """Shards from the directory and devices with their costs from the shards (in parallel).

    A shard that cannot be reached raises routers.errors.FanOutError naming it:
    a plan that ignored its devices would be wrong.
    """
    shards = live_shards()
    owned = fan_out(_per_shard(cost), [shard.alias for shard in shards])
    placements = {
        device_id: (shard, pinned, serial)
        for device_id, shard, pinned, serial in Placement.objects.values_list(
            "device_id", "shard_id", "pinned", "device__serial"
        )
    }
    moving = set(
        MoveJob.objects.filter(phase__in=MoveJob.IN_FLIGHT).values_list("device_id", flat=True)
    )
    devices = []
    for alias in sorted(owned):
        for device_id, amount in sorted(owned[alias].items()):
            placed_on, pinned, serial = placements.get(device_id, (None, False, ""))
            if placed_on is None:
                continue  # a fence without a directory device: nothing the planner may touch
            if placed_on != alias and device_id in owned.get(placed_on, {}):
                continue  # mid-move, owned on both ends: counted where the directory says
            busy = device_id in moving or placed_on != alias
            devices.append(DeviceSpec(device_id, alias, amount, pinned, busy, serial))
    return shards, devices
