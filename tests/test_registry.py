"""The run-time shard registry: a retired shard loses its connection alias in every process."""

import pytest
from django.db import connections

from core.models import Shard
from routers.errors import UnknownShard
from routers.registry import (
    ensure_shard_connection,
    refresh_registry,
    serving_shards,
    unregister_shard_connection,
)

ALIAS = "shard_leaving"


@pytest.fixture
def leaving_shard(shards) -> str:
    """A shard registered at run time (not in settings.DATABASES), as in production."""
    Shard.objects.create(alias=ALIAS, number=97, host="127.0.0.1", port=1, db_name="leaving")
    refresh_registry(force=True)
    yield ALIAS
    unregister_shard_connection(ALIAS)


def test_retired_shard_alias_is_unregistered_on_refresh(leaving_shard):
    assert leaving_shard in connections.settings
    assert leaving_shard in serving_shards()

    Shard.objects.filter(alias=leaving_shard).update(state=Shard.State.RETIRED)
    refresh_registry(force=True)

    assert leaving_shard not in connections.settings
    assert leaving_shard not in serving_shards()
    with pytest.raises(UnknownShard, match="retired"):
        ensure_shard_connection(leaving_shard)
    assert leaving_shard not in connections.settings  # the failed lookup re-added nothing


def test_draining_shard_keeps_its_alias(leaving_shard):
    Shard.objects.filter(alias=leaving_shard).update(state=Shard.State.DRAINING)
    refresh_registry(force=True)
    assert leaving_shard in connections.settings
    ensure_shard_connection(leaving_shard)  # it still holds devices: reachable


def test_retiring_closes_this_threads_open_connection(shards):
    # A reachable run-time alias: shard_1's test database under a second name.
    config = connections.settings["shard_1"]
    Shard.objects.create(
        alias=ALIAS, number=97, host=config["HOST"], port=int(config["PORT"]),
        db_name=config["NAME"],
    )  # fmt: skip
    refresh_registry(force=True)
    try:
        connection = connections[ALIAS]
        connection.ensure_connection()
        assert connection.is_usable()

        Shard.objects.filter(alias=ALIAS).update(state=Shard.State.RETIRED)
        refresh_registry(force=True)
        assert connection.connection is None  # closed, not left open until the thread dies
        assert ALIAS not in connections.settings
    finally:
        unregister_shard_connection(ALIAS)
