"""Rebalancing devices across shards, draining a shard, pinning a device.

planner: pure functions that turn shards (weight, state) and devices (cost,
shard, pinned) into an ordered list of moves; costs: per-device costs read
from every shard in parallel; runner: a recorded run (core.models.Rebalance)
that makes those moves one after another, can be stopped and resumed; drain:
taking a shard out of service until it can be retired; report and progress:
how runs and plans are shown to operators.
"""
