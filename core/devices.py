"""Creating devices: a directory row, a placement, a fence on the shard and a token."""

import logging
from dataclasses import dataclass

from django.db import InterfaceError, OperationalError, transaction

from core.credentials import issue_token
from core.models import Device, DeviceAccess, Placement, Shard, User
from routers.aliases import DIRECTORY_ALIAS
from routers.errors import UnknownShard
from routers.placement import remember_placement, shards_for_new_devices
from routers.registry import ensure_shard_connection
from shards.fence import open_fence

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewDevice:
    device: Device
    shard: str
    token: str


def create_device(
    serial: str,
    *,
    name: str = "",
    users: list[User] | None = None,
    shard: str | None = None,
    pin: bool = False,
) -> NewDevice:
    """Register a device on the least-loaded active shard (or on `shard`, optionally pinned).

    The shard's fence row is written inside the directory transaction, so a shard
    that cannot be reached leaves no half-made device in the directory. Then the
    next shard in line is tried: one shard being down stops no enrolment (unless
    `shard` names it).
    """
    if shard is not None:
        return _create_on(shard, serial, name, users, pin)
    candidates = shards_for_new_devices()
    for alias in candidates[:-1]:
        try:
            return _create_on(alias, serial, name, users, pin)
        except (OperationalError, InterfaceError) as exc:
            logger.warning("new device %r not placed on %s (unreachable): %s", serial, alias, exc)
    return _create_on(candidates[-1], serial, name, users, pin)


def _create_on(
    alias: str, serial: str, name: str, users: list[User] | None, pin: bool
) -> NewDevice:
    # The directory's current word, not this process's cached registry: a shard
    # drained a second ago must not take new devices.
    state = Shard.objects.filter(alias=alias).values_list("state", flat=True).first()
    if state is None:
        raise UnknownShard(f"shard {alias!r} is not registered")
    if state != Shard.State.ACTIVE:
        raise UnknownShard(f"shard {alias!r} is {state}; new devices go to active shards only")
    ensure_shard_connection(alias)
    with transaction.atomic(using=DIRECTORY_ALIAS):
        device = Device.objects.create(serial=serial, name=name)
        Placement.objects.create(device=device, shard_id=alias, pinned=pin)
        DeviceAccess.objects.bulk_create(DeviceAccess(device=device, user=u) for u in users or [])
        token = issue_token(device)
        open_fence(device.pk, alias)
    remember_placement(device.pk, alias)
    return NewDevice(device=device, shard=alias, token=token)


def find_device(ref: str | int) -> Device:
    """A device by its serial, or by its numeric id; DoesNotExist names what was asked for."""
    ref = str(ref).strip()
    device = Device.objects.filter(serial=ref).first()
    if device is None and ref.isdigit():
        device = Device.objects.filter(pk=int(ref)).first()
    if device is None:
        raise Device.DoesNotExist(f"no device with serial or id {ref!r}")
    return device
