"""Client-visible ids are unique across the cluster and name the shard that minted them."""

import pytest
from django.db import connections

from core.models import Shard
from shards.ids import created_ms_of, shard_number_of
from shards.models import Command, Upload
from tests.factories import make_device


def test_ids_are_unique_across_shards_and_carry_the_shard_number(shards):
    numbers = dict(Shard.objects.values_list("alias", "number"))
    devices = [make_device(shard=alias).device for alias in shards]
    ids: dict[int, str] = {}
    for device, alias in zip(devices, shards, strict=True):
        commands = Command.objects.for_device(device).bulk_create(
            Command(device_id=device.pk, name=f"c{i}") for i in range(300)
        )
        upload = Upload.objects.for_device(device).create(
            device_id=device.pk, batch_id="b1", payload=[], reading_count=0
        )
        for obj in [*commands, upload]:
            assert obj.pk is not None
            assert shard_number_of(obj.pk) == numbers[alias]
            ids[obj.pk] = alias
    assert len(ids) == 2 * 301  # no id repeated, within or across shards


def test_ids_grow_with_time(shards):
    import time

    device = make_device(shard="shard_1").device
    first = Command.objects.for_device(device).create(device_id=device.pk, name="a")
    now_ms = int(time.time() * 1000)
    second = Command.objects.for_device(device).create(device_id=device.pk, name="b")
    assert second.pk > first.pk
    assert abs(created_ms_of(second.pk) - now_ms) < 60_000


def test_a_shard_without_identity_refuses_to_mint_ids(shards):
    device = make_device(shard="shard_1").device
    with connections["shard_1"].cursor() as cursor:
        cursor.execute("DELETE FROM shards_shardidentity")
    with pytest.raises(Exception, match="no identity"):
        Command.objects.for_device(device).create(device_id=device.pk, name="x")
