"""Directory tables exist only on the directory, shard tables only on shards."""

import pytest
from django.db import connections

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
    expected = {
        "shards_shardidentity",
        "shards_devicefence",
        "shards_upload",
        "shards_reading",
        "shards_latestvalue",
        "shards_command",
        "shards_devicestatus",
        "shards_alert",
        "shards_rolluppending",
        "shards_readingrollup",
        "shards_rawretention",
    }
    assert names == expected | {"django_migrations"}


@pytest.mark.parametrize("alias", TEST_SHARDS)
def test_shards_have_the_id_function(shards, alias):
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_proc WHERE proname = 'fleet_next_id'")
        assert cursor.fetchone()[0] == 1
