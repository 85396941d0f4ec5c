"""Directory tables exist only on the directory, shard tables only on shards."""

import pytest
from django.db import connections

from routers.silos import shard_models
from shards.moves.capture import tables_without_capture
from shards.moves.tables import device_tables
from tests.conftest import TEST_SHARDS


def tables(alias: str) -> set[str]:
    return set(connections[alias].introspection.table_names())


def test_directory_has_directory_tables_only(shards):
    names = tables("default")
    assert {"core_user", "core_device", "core_placement", "core_shard"} <= names
    assert {n for n in names if n.startswith("shards_")} == set()


@pytest.mark.parametrize("alias", TEST_SHARDS)
def test_shards_have_shard_tables_only(shards, alias):
    names = tables(alias)
    expected = {model._meta.db_table for model in shard_models()}
    assert {"shards_reading", "shards_devicefence", "shards_movechange"} <= expected
    assert names == expected | {"django_migrations"}


@pytest.mark.parametrize("alias", TEST_SHARDS)
def test_every_table_a_device_moves_with_logs_its_changes(shards, alias):
    with connections[alias].cursor() as cursor:
        assert tables_without_capture(cursor, device_tables()) == []


@pytest.mark.parametrize("alias", TEST_SHARDS)
def test_shards_have_the_id_function(shards, alias):
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_proc WHERE proname = 'fleet_next_id'")
        assert cursor.fetchone()[0] == 1
