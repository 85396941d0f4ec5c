"""Rebalancing devices across shards, draining a shard, pinning a device.

planner: pure functions that turn shards (weight, state) and devices (cost,
shard, pinned) into an ordered list of moves; costs: per-device costs read
from every shard in parallel; runner: a recorded run (core.models.Rebalance)
that can be stopped, resumed or queued for a worker (background); parallel:
making its moves several at once, within the limits of slots and the pace and
back-off of throttle, as set by options; entries: a plan's entries and one
planned move; drain: taking a shard out of service until it can be retired;
report and progress: how runs and plans are shown to operators.
"""
