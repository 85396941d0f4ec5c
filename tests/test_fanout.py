"""Cross-shard reads run on every shard in parallel; a down shard is named, not hidden."""

import threading

import pytest

from routers.errors import FanOutError
from routers.fanout import fan_out
from shards.models import Reading
from tests.factories import make_device, reading_times


def test_fan_out_joins_results_from_every_shard(shards):
    for alias, n in (("shard_1", 3), ("shard_2", 5)):
        device = make_device(shard=alias).device
        Reading.objects.for_device(device).bulk_create(
            Reading(device_id=device.pk, metric="m", ts=ts, value=1.0) for ts in reading_times(n)
        )
    threads = set()

    def count(alias: str) -> int:
        threads.add(threading.get_ident())
        return Reading.objects.on_shard(alias).count()

    assert fan_out(count) == {"shard_1": 3, "shard_2": 5}
    assert threading.get_ident() not in threads  # ran in worker threads


def test_fan_out_runs_shards_concurrently(shards):
    barrier = threading.Barrier(len(shards), timeout=10)

    def meet(alias: str) -> str:
        barrier.wait()  # deadlocks (BrokenBarrierError) unless all run at once
        return alias

    assert fan_out(meet) == {alias: alias for alias in shards}


def test_a_down_shard_is_reported_and_the_others_still_answer(dead_shard):
    def count(alias: str) -> int:
        return Reading.objects.on_shard(alias).count()

    results = fan_out(count, return_exceptions=True)
    assert results["shard_1"] == 0 and results["shard_2"] == 0
    assert isinstance(results[dead_shard], Exception)

    with pytest.raises(FanOutError, match=dead_shard) as caught:
        fan_out(count)
    assert set(caught.value.errors) == {dead_shard}
