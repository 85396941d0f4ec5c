"""Which planned moves may run side by side: the run's limits on moves in flight.

Never two moves of one device (the second would find the device already
moving, or moved), at most `parallel` in all, and at most `max_per_source` out
of and `max_per_target` into any one shard, so a single shard's server is not
copying for every mover at once.
"""

from collections import Counter
from typing import Any

from shards.rebalance.options import RunOptions

Entry = dict[str, Any]


class Slots:
    def __init__(self, options: RunOptions) -> None:
        self.options = options
        self.devices: set[int] = set()
        self.sources: Counter[str] = Counter()
        self.targets: Counter[str] = Counter()

    @property
    def in_flight(self) -> int:
        return len(self.devices)

    @property
    def free(self) -> bool:
        return self.in_flight < self.options.parallel

    def fits(self, entry: Entry) -> bool:
        return (
            self.free
            and entry["device"] not in self.devices
            and self.sources[entry["source"]] < self.options.max_per_source
            and self.targets[entry["target"]] < self.options.max_per_target
        )

    def take(self, entry: Entry) -> None:
        self.devices.add(entry["device"])
        self.sources[entry["source"]] += 1
        self.targets[entry["target"]] += 1

    def release(self, entry: Entry) -> None:
        self.devices.discard(entry["device"])
        self.sources[entry["source"]] -= 1
        self.targets[entry["target"]] -= 1
