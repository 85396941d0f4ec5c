"""Queries reach exactly the device's shard, checked at the cursor of every connection."""

import pytest
from django.db import connections

from routers.errors import MissingDeviceContext, UnknownDevice
from shards.fence import write_for_device
from shards.models import Command, LatestValue, Reading, Upload
from tests.factories import make_device, reading_times
from tests.querylog import queries_by_alias

NO_CONTEXT_QUERIES = {
    "count": lambda: Reading.objects.count(),
    "filter by device_id": lambda: list(Reading.objects.filter(device_id=1)),
    "first": lambda: Upload.objects.first(),
    "exists": lambda: Command.objects.exists(),
    "create": lambda: Command.objects.create(device_id=1, name="reboot"),
    "update": lambda: LatestValue.objects.filter(device_id=1).update(value=1.0),
    "delete": lambda: Reading.objects.filter(device_id=1).delete(),
    "save unplaced row": lambda: Command(name="reboot").save(),
}


@pytest.mark.parametrize("query", NO_CONTEXT_QUERIES.values(), ids=NO_CONTEXT_QUERIES.keys())
def test_shard_query_without_device_context_raises_and_sends_nothing(shards, query):
    with queries_by_alias() as log, pytest.raises(MissingDeviceContext, match="for_device"):
        query()
    assert log.aliases() == set()


def test_for_device_reads_and_writes_hit_only_that_shard(shards):
    device = make_device(shard="shard_2").device
    make_device(shard="shard_1")
    Reading.objects.for_device(device).count()  # warms the placement cache

    with queries_by_alias() as log:
        Reading.objects.for_device(device).bulk_create(
            Reading(device_id=device.pk, metric="temp", ts=ts, value=20.5)
            for ts in reading_times(3)
        )
        command = Command.objects.for_device(device).create(device_id=device.pk, name="reboot")
        assert Reading.objects.for_device(device).count() == 3
        Command.objects.for_device(device).filter(pk=command.pk).update(status="sent")
        Reading.objects.for_device(device).filter(metric="temp").delete()

    assert log.aliases() == {"shard_2"}
    assert log.count("default") == 0
    assert command._state.db == "shard_2"


def test_save_with_instance_hint_lands_on_the_devices_shard(shards):
    device = make_device(shard="shard_1").device
    with queries_by_alias() as log:
        Command(device_id=device.pk, name="ping").save()
    assert log.aliases() == {"shard_1"}
    with connections["shard_1"].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM shards_command WHERE device_id = %s", [device.pk])
        assert cursor.fetchone()[0] == 1
    with connections["shard_2"].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM shards_command")
        assert cursor.fetchone()[0] == 0


def test_unknown_device_is_an_error_not_a_guess(shards):
    with pytest.raises(UnknownDevice, match="987654"):
        Reading.objects.for_device(987654).count()


def test_fenced_write_goes_to_the_devices_shard(shards):
    device = make_device(shard="shard_2").device

    def write(alias: str) -> str:
        Command.objects.on_shard(alias).create(device_id=device.pk, name="sync")
        return alias

    with queries_by_alias() as log:
        assert write_for_device(device, write) == "shard_2"
    assert log.aliases() == {"shard_2"}
    assert Command.objects.for_device(device).count() == 1
