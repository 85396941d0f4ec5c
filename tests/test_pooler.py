"""Every database is reached through PgBouncer in transaction mode, and what the project
keeps across transactions (the locks that say a move, a rebalance or an analysis runs)
survives the pooler handing each transaction to any server connection."""

import threading

import pytest
from django.db import connections, transaction

from core import local_cluster
from core.models import MoveJob
from routers.aliases import DIRECTORY_ALIAS
from shards.advisory import HeldLock, holding, lock_holder
from shards.analysis.run import shard_run_lock
from shards.moves.protocol import MOVE_LOCK_NAMESPACE, _job_lock, is_running_elsewhere
from shards.stats import pool_figures
from tests.factories import create_device
from tests.waiting import wait_until

# More clients than the pool could ever give one server connection each at once is not
# needed: a few open transactions side by side make the pooler use several.
SIDE_BY_SIDE = 6


def in_open_transactions(alias: str, check, count: int = SIDE_BY_SIDE) -> list:
    """`check()` from `count` threads, each inside a transaction held open until all have
    run it, so each runs on a server connection of its own."""
    results: list = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def worker() -> None:
        try:
            with transaction.atomic(using=alias):
                with connections[alias].cursor() as cursor:
                    cursor.execute("SELECT 1")
                barrier.wait(timeout=30)
                results.append(check())
                barrier.wait(timeout=30)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return results


def test_the_directory_and_every_shard_are_reached_through_a_pooler(shards):
    for alias in ["default", *shards]:
        assert int(connections[alias].settings_dict["PORT"]) in {
            local_cluster.pooler_port(port)
            for port in [
                local_cluster.DIRECTORY_PORT,
                *(p for p, _ in local_cluster.SHARDS.values()),
            ]
        }
        with transaction.atomic(using=alias):
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT 1")
            figures = pool_figures(alias)
        assert figures is not None, f"{alias} is reached directly"
        assert figures.clients_active >= 1  # this test's own transaction
        assert 1 <= figures.servers <= figures.max_connections == local_cluster.POOL_SIZE


def test_a_move_jobs_lock_is_seen_from_every_server_connection_while_held(shards):
    device = create_device("lock-seen", shard="shard_1").device
    job = MoveJob.objects.create(device=device, source_id="shard_1", target_id="shard_2", epoch=2)

    with _job_lock(job):
        seen = in_open_transactions(DIRECTORY_ALIAS, lambda: is_running_elsewhere(job))
        assert seen == [True] * SIDE_BY_SIDE
        # and nobody else may take it, whatever server connection they get
        taken = in_open_transactions(
            DIRECTORY_ALIAS,
            lambda: HeldLock(DIRECTORY_ALIAS, MOVE_LOCK_NAMESPACE, job.pk).acquire(),
        )
        assert taken == [False] * SIDE_BY_SIDE

    # Letting go closes the holder's connection; the pooler then ends its server
    # connection's transaction, a moment later (a loaded machine showed the gap).
    wait_until(lambda: not is_running_elsewhere(job), what="the lock to go with its holder")
    with _job_lock(job):  # free again once its holder let go
        assert is_running_elsewhere(job)


def test_a_held_lock_ends_with_its_holders_connection(shards):
    lock = HeldLock(DIRECTORY_ALIAS, MOVE_LOCK_NAMESPACE, 999_001, holder="fleet-test holder")
    assert lock.acquire()
    assert lock_holder(DIRECTORY_ALIAS, MOVE_LOCK_NAMESPACE, 999_001) == "fleet-test holder"
    # release() closes the connection mid-transaction, as a holder that dies does: the
    # pooler then ends the server connection's transaction, and the lock with it.
    lock.release()
    wait_until(
        lambda: lock_holder(DIRECTORY_ALIAS, MOVE_LOCK_NAMESPACE, 999_001) is None,
        what="the lock to go with its holder's connection",
    )
    with holding(DIRECTORY_ALIAS, MOVE_LOCK_NAMESPACE, 999_001) as acquired:
        assert acquired


def test_a_shards_analysis_lock_keeps_a_second_run_out_until_released(shards):
    with shard_run_lock("shard_1") as first:
        assert first
        second = in_open_transactions("shard_1", lambda: _try_analysis_lock("shard_1"), count=3)
        assert second == [False] * 3
    assert _try_analysis_lock("shard_1")


def _try_analysis_lock(alias: str) -> bool:
    with shard_run_lock(alias) as acquired:
        return acquired


@pytest.mark.parametrize("alias", ["default", "shard_1"])
def test_querysets_iterate_without_server_side_cursors(shards, alias):
    """A server-side cursor would outlive its transaction's server connection."""
    assert connections[alias].settings_dict["DISABLE_SERVER_SIDE_CURSORS"] is True
