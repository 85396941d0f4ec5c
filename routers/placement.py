"""Device -> shard resolution, cached per process and in Redis.

The steady-state device request must not touch the directory, so a placement is
looked up in the in-process cache, then in Redis, and only then in the
directory. A move calls `invalidate_placement` (or `remember_placement` with the
new shard). A process whose local copy is stale writes to the old shard at
worst, whose fence row turns the write away; the caller then invalidates and
resolves again (shards.fence).
"""

from django.conf import settings
from django.core.cache import caches
from django.db.models import Count, Q

from routers.aliases import DIRECTORY_ALIAS
from routers.errors import UnknownDevice, UnknownShard
from routers.registry import ensure_shard_connection


def _key(device_id: int) -> str:
    return f"placement:{device_id}"


def _local():
    return caches["local"]


def _shared():
    return caches["default"]


def device_id_of(device: object) -> int:
    """Accept a Device, anything with a device_id, or a plain id."""
    for attr in ("device_id", "pk"):
        value = getattr(device, attr, None)
        if value is not None:
            return int(value)
    if isinstance(device, int) and not isinstance(device, bool):
        return device
    if isinstance(device, str) and device.isdigit():
        return int(device)
    raise TypeError(f"expected a device or a device id, got {device!r}")


def read_placement(device_id: int) -> str:
    """The directory's answer, uncached: one query."""
    from core.models import Placement

    alias = (
        Placement.objects.using(DIRECTORY_ALIAS)
        .filter(device_id=device_id)
        .values_list("shard_id", flat=True)
        .first()
    )
    if alias is None:
        raise UnknownDevice(f"device {device_id} has no placement in the directory")
    return alias


def shard_for_device(device: object) -> str:
    """The alias of the shard that owns `device`, ready to be used with `.using()`."""
    device_id = device_id_of(device)
    key = _key(device_id)
    alias = _local().get(key)
    if alias is None:
        alias = _shared().get(key)
        if alias is None:
            alias = read_placement(device_id)
            # add, not set: never overwrite a newer placement published by a move.
            _shared().add(key, alias, settings.PLACEMENT_REDIS_TTL)
        _local().set(key, alias, settings.PLACEMENT_LOCAL_TTL)
    ensure_shard_connection(alias)
    return alias


def invalidate_placement(device: object) -> None:
    """Forget a device's placement here and in Redis; the next lookup reads the directory."""
    key = _key(device_id_of(device))
    _local().delete(key)
    _shared().delete(key)


def remember_placement(device: object, alias: str) -> None:
    """Publish a placement the caller knows to be current (after placing or moving)."""
    key = _key(device_id_of(device))
    _shared().set(key, alias, settings.PLACEMENT_REDIS_TTL)
    _local().set(key, alias, settings.PLACEMENT_LOCAL_TTL)


def shards_for_new_devices() -> list[str]:
    """Active shards, fewest devices per unit of weight first (one directory query).

    The first is where a new device goes; the rest are where it goes when the first
    cannot be reached.
    """
    from core.models import Shard

    candidates = (
        Shard.objects.using(DIRECTORY_ALIAS)
        .filter(state=Shard.State.ACTIVE, weight__gt=0)
        .annotate(devices=Count("placements", filter=Q(placements__isnull=False)))
        .values_list("alias", "devices", "weight")
    )
    ranked = sorted(candidates, key=lambda row: (row[1] / row[2], row[0]))
    if not ranked:
        raise UnknownShard("no active shard with a positive weight: register one first")
    return [alias for alias, _, _ in ranked]


def choose_shard_for_new_device() -> str:
    """The active shard with the fewest devices per unit of weight."""
    return shards_for_new_devices()[0]
