"""Placement: cached resolution, invalidation, least-loaded choice and pinning."""

import pytest
from django.core.cache import caches

from core.models import Placement, Shard
from routers.errors import UnknownShard
from routers.placement import (
    choose_shard_for_new_device,
    invalidate_placement,
    read_placement,
    shard_for_device,
)
from tests.factories import make_device
from tests.querylog import queries_by_alias


def test_warm_cache_resolves_with_zero_directory_queries(shards):
    device = make_device(shard="shard_2").device
    caches["local"].clear()
    caches["default"].clear()
    with queries_by_alias() as cold:
        assert shard_for_device(device) == "shard_2"
    assert cold.count("default") == 1

    with queries_by_alias() as warm:
        for _ in range(50):
            assert shard_for_device(device.pk) == "shard_2"
    assert warm.aliases() == set()


def test_redis_alone_serves_a_process_with_a_cold_local_cache(shards):
    device = make_device(shard="shard_1").device
    shard_for_device(device)
    caches["local"].clear()
    with queries_by_alias() as log:
        assert shard_for_device(device) == "shard_1"
    assert log.count("default") == 0


def test_invalidation_reads_the_directory_exactly_once(shards):
    device = make_device(shard="shard_1").device
    shard_for_device(device)
    Placement.objects.filter(device=device).update(shard_id="shard_2")
    assert shard_for_device(device) == "shard_1"  # cached, as designed

    invalidate_placement(device)
    with queries_by_alias() as log:
        assert shard_for_device(device) == "shard_2"
        assert shard_for_device(device) == "shard_2"
    assert log.count("default") == 1


def test_new_devices_go_to_the_least_loaded_shard_by_weight(shards):
    Shard.objects.filter(alias="shard_1").update(weight=100)
    Shard.objects.filter(alias="shard_2").update(weight=300)
    placed = [make_device().shard for _ in range(8)]
    assert placed.count("shard_1") == 2
    assert placed.count("shard_2") == 6


def test_only_active_shards_take_new_devices(shards):
    Shard.objects.filter(alias="shard_1").update(state=Shard.State.DRAINING)
    assert {make_device().shard for _ in range(3)} == {"shard_2"}
    assert choose_shard_for_new_device() == "shard_2"
    with pytest.raises(UnknownShard, match="draining"):
        make_device(shard="shard_1")


def test_pinned_device_stays_on_the_chosen_shard(shards):
    for _ in range(3):
        make_device(shard="shard_1")
    new = make_device(shard="shard_1", pin=True)
    assert new.shard == "shard_1"
    placement = Placement.objects.get(device=new.device)
    assert placement.pinned and placement.shard_id == "shard_1"
    assert read_placement(new.device.pk) == "shard_1"


def test_no_active_shard_is_a_clear_error(shards):
    Shard.objects.update(state=Shard.State.DRAINING)
    with pytest.raises(UnknownShard, match="no active shard"):
        choose_shard_for_new_device()


def test_retired_shard_is_refused_even_when_its_connection_is_known(shards):
    from routers.registry import ensure_shard_connection, refresh_registry

    ensure_shard_connection("shard_1")
    Shard.objects.filter(alias="shard_1").update(state=Shard.State.RETIRED)
    refresh_registry(force=True)
    with pytest.raises(UnknownShard, match="retired"):
        ensure_shard_connection("shard_1")


def test_placement_survives_redis_being_down(shards, settings):
    device = make_device(shard="shard_2").device
    caches["local"].clear()
    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"},
    }
    with queries_by_alias() as log:
        assert shard_for_device(device) == "shard_2"  # Redis refuses: the directory answers
        assert shard_for_device(device) == "shard_2"  # then the process's own cache does
    assert log.count("default") == 1
