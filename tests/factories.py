"""Small helpers to make directory and shard rows in tests."""

import itertools
from datetime import UTC, datetime, timedelta

from core.devices import NewDevice, create_device

_serials = itertools.count(1)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def make_device(**kwargs) -> NewDevice:
    return create_device(f"test-{next(_serials):05d}", **kwargs)


def reading_times(n: int, start: datetime = T0) -> list[datetime]:
    return [start + timedelta(seconds=i) for i in range(n)]
