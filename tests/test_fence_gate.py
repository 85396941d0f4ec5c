"""Writers and readers that meet a fenced device queue at the mover's gate: they go on the
moment the mover lets go, instead of finding out at their next poll."""

import time
from contextlib import closing

import pytest

from routers.placement import shard_for_device
from shards.commands import create_command
from shards.fence import DeviceMoved, close_gate, write_for_device
from shards.models import Command, DeviceFence
from shards.moves.protocol import move_device
from shards.moves.streams import raw_connection
from tests.factories import make_device
from tests.move_helpers import Background
from tests.test_fence import move_behind_the_caches_back

GATE_QUEUE_SQL = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1"
    " AND classid = 0 AND objid = %s AND mode = 'ShareLock' AND NOT granted"
)


def queued_at_gate(alias: str, device_id: int, *, within: float = 10.0) -> bool:
    """Whether someone waits for the device's gate on `alias` (watched for `within` s)."""
    deadline = time.monotonic() + within
    with closing(raw_connection(alias)) as watcher:
        watcher.autocommit = True
        with watcher.cursor() as cursor:
            while time.monotonic() < deadline:
                cursor.execute(GATE_QUEUE_SQL, [device_id])
                if cursor.fetchone()[0]:
                    return True
                time.sleep(0.02)
    return False


def create_after_move(device_id: int) -> str:
    def create(alias: str) -> str:
        Command.objects.on_shard(alias).create(device_id=device_id, name="held")
        return alias

    return write_for_device(device_id, create)


def count_commands(device_id: int) -> int:
    return Command.objects.for_device(device_id).count()


@pytest.mark.parametrize("work", [create_after_move, count_commands], ids=["writer", "reader"])
def test_a_fenced_device_is_waited_for_at_the_gate_and_found_on_its_new_owner(shards, work):
    device = make_device(shard="shard_1").device
    create_command(device.pk, "before")
    assert shard_for_device(device) == "shard_1"  # this process caches the old placement
    fences = DeviceFence.objects.on_shard("shard_1").filter(device_id=device.pk)
    with closing(raw_connection("shard_1")) as mover:
        with mover.cursor() as cursor:
            close_gate(cursor, device.pk)
        fences.update(state=DeviceFence.State.FENCED)
        waiter = Background(lambda: work(device.pk), "waiter")
        waiter.start()

        assert queued_at_gate("shard_1", device.pk), "the waiter polls instead of queueing"
        assert waiter.is_alive()
        # What a move does before letting go: copy, switch, release the source.
        Command.objects.on_shard("shard_2").create(device_id=device.pk, name="before")
        move_behind_the_caches_back(device, "shard_1", "shard_2")
        mover.commit()

        outcome = waiter.outcome()
    if work is create_after_move:
        assert outcome == "shard_2"
        assert Command.objects.on_shard("shard_2").filter(name="held").count() == 1
        assert Command.objects.on_shard("shard_1").filter(name="held").count() == 0
    else:
        assert outcome == 1


def test_the_wait_at_a_held_gate_still_ends_after_fence_wait_seconds(shards, settings):
    settings.FENCE_WAIT_SECONDS = 0.5
    device = make_device(shard="shard_1").device
    DeviceFence.objects.on_shard("shard_1").filter(device_id=device.pk).update(
        state=DeviceFence.State.FENCED
    )
    with closing(raw_connection("shard_1")) as mover:
        with mover.cursor() as cursor:
            close_gate(cursor, device.pk)
        started = time.monotonic()
        with pytest.raises(DeviceMoved, match="fenced"):
            create_after_move(device.pk)
        assert time.monotonic() - started < 5  # the lock's timeout, not the mover's 15 s
    assert Command.objects.on_shard("shard_1").count() == 0


def test_a_move_holds_its_gate_through_the_fenced_window_and_opens_it(shards):
    device = make_device(shard="shard_1").device
    assert shard_for_device(device) == "shard_1"
    waiters: list[Background] = []

    def at_phase(job) -> None:
        if job.phase == "fenced" and not waiters:
            waiter = Background(lambda: create_after_move(device.pk), "writer")
            waiter.start()
            waiters.append(waiter)
            assert queued_at_gate("shard_1", device.pk), "no gate held in the fenced window"

    job = move_device(device.pk, "shard_2", on_phase=at_phase)

    assert job.phase == "released"
    assert waiters[0].outcome() == "shard_2"
    with closing(raw_connection("shard_1")) as watcher, watcher.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1"
            " AND objid = %s",
            [device.pk],
        )
        assert cursor.fetchone()[0] == 0  # the gate is open again
