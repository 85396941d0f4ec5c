"""A stale placement cache is harmless: the old shard's fence turns the write away."""

from contextlib import closing

import pytest
from django.db import transaction

from core.models import Placement
from routers.placement import shard_for_device
from shards.fence import DeviceMoved, lock_owned_devices, open_fence, write_for_device
from shards.models import Command, DeviceFence
from shards.moves.streams import raw_connection
from tests.factories import make_device


def move_behind_the_caches_back(device, source: str, target: str) -> None:
    """What a finished move leaves behind, without touching any cache."""
    open_fence(device.pk, target, epoch=2)
    DeviceFence.objects.on_shard(source).filter(device_id=device.pk).update(state="moved")
    Placement.objects.filter(device=device).update(shard_id=target, epoch=2)


def test_write_with_stale_cache_lands_on_the_new_shard(shards):
    device = make_device(shard="shard_1").device
    assert shard_for_device(device) == "shard_1"  # cached everywhere now
    move_behind_the_caches_back(device, "shard_1", "shard_2")

    landed = write_for_device(
        device,
        lambda alias: (
            Command.objects.on_shard(alias).create(device_id=device.pk, name="after-move")._state.db
        ),
    )

    assert landed == "shard_2"
    assert shard_for_device(device) == "shard_2"
    assert Command.objects.on_shard("shard_1").filter(device_id=device.pk).count() == 0
    assert Command.objects.on_shard("shard_2").filter(device_id=device.pk).count() == 1


def test_write_is_refused_when_no_shard_owns_the_device(shards):
    device = make_device(shard="shard_1").device
    DeviceFence.objects.on_shard("shard_1").filter(device_id=device.pk).update(state="fenced")
    calls = []
    with pytest.raises(DeviceMoved, match="fenced"):
        write_for_device(device, calls.append)
    assert calls == []


def test_a_device_being_copied_takes_writes_but_its_deletes_wait(shards, settings):
    settings.FENCE_WAIT_SECONDS = 0.3
    device = make_device(shard="shard_1").device
    DeviceFence.objects.on_shard("shard_1").filter(device_id=device.pk).update(state="copying")

    def create(alias: str) -> str:
        Command.objects.on_shard(alias).create(device_id=device.pk, name="while-copying")
        return alias

    assert write_for_device(device, create) == "shard_1"
    with pytest.raises(DeviceMoved, match="copying"):
        write_for_device(device, lambda alias: None, deleting=True)

    DeviceFence.objects.on_shard("shard_1").filter(device_id=device.pk).update(state="active")
    removed = write_for_device(
        device,
        lambda alias: Command.objects.on_shard(alias).filter(device_id=device.pk).delete()[0],
        deleting=True,
    )
    assert removed == 1


def test_lock_owned_devices_takes_owners_and_skips_a_fence_a_mover_holds(shards):
    devices = {state: make_device(shard="shard_1").device.pk for state in DeviceFence.State}
    fences = DeviceFence.objects.on_shard("shard_1")
    for state, device_id in devices.items():
        fences.filter(device_id=device_id).update(state=state)
    held = make_device(shard="shard_1").device.pk  # active, but a mover is changing it
    with closing(raw_connection("shard_1")) as mover, mover.cursor() as cursor:
        cursor.execute("SELECT 1 FROM shards_devicefence WHERE device_id = %s FOR UPDATE", [held])
        with transaction.atomic(using="shard_1"):
            owned = lock_owned_devices("shard_1")
            deletable = lock_owned_devices("shard_1", deleting=True)
            some = lock_owned_devices("shard_1", [devices["active"], devices["moved"], held])
    S = DeviceFence.State
    assert owned == sorted([devices[S.ACTIVE], devices[S.COPYING]])
    assert deletable == [devices[S.ACTIVE]]
    assert some == [devices[S.ACTIVE]]
