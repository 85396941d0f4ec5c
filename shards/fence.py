"""The per-device fence: how writes stay correct while a device moves between shards.

Every write for a device runs inside a transaction on the device's shard that
first takes the device's fence row FOR SHARE and checks that it is active. A
mover fences the row (FOR UPDATE, then state 'moved') so in-flight writers
finish first and new ones wait; once it commits, waiting writers see 'moved',
drop their cached placement and retry on the new shard. A writer whose cached
placement is stale is turned away the same way.
"""

from collections.abc import Callable
from typing import TypeVar

from django.db import connections, transaction

from routers.placement import device_id_of, invalidate_placement, shard_for_device
from shards.models import DeviceFence

T = TypeVar("T")

# Each retry re-reads the placement; two moves in a row are the most a writer meets.
WRITE_ATTEMPTS = 4


class DeviceMoved(Exception):
    """The shard tried no longer owns the device; resolve the placement again."""

    def __init__(self, device_id: int, alias: str, state: str | None) -> None:
        self.device_id = device_id
        self.alias = alias
        self.state = state
        super().__init__(f"device {device_id} is not active on {alias} (fence: {state})")


def lock_fence(device_id: int, alias: str) -> None:
    """Inside a transaction on `alias`: hold the fence row FOR SHARE or raise DeviceMoved.

    Raw SQL because Django's select_for_update() has no FOR SHARE mode, and a
    shared lock is the point: writers of one device do not queue behind each other.
    """
    with connections[alias].cursor() as cursor:
        cursor.execute(
            f"SELECT state FROM {DeviceFence._meta.db_table} WHERE device_id = %s FOR SHARE",
            [device_id],
        )
        row = cursor.fetchone()
    state = row[0] if row else None
    if state != DeviceFence.State.ACTIVE:
        raise DeviceMoved(device_id, alias, state)


def write_for_device(device: object, write: Callable[[str], T]) -> T:
    """Run `write(alias)` in a fenced transaction on the device's shard, following moves."""
    device_id = device_id_of(device)
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        alias = shard_for_device(device_id)
        try:
            with transaction.atomic(using=alias):
                lock_fence(device_id, alias)
                return write(alias)
        except DeviceMoved:
            invalidate_placement(device_id)
            if attempt == WRITE_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def open_fence(device_id: int, alias: str, *, epoch: int = 1) -> None:
    """Make `alias` the device's owner on the shard side (idempotent)."""
    DeviceFence.objects.on_shard(alias).update_or_create(
        device_id=device_id,
        defaults={"state": DeviceFence.State.ACTIVE, "epoch": epoch},
    )
