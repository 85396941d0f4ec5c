"""The online move of one device between shards, on real PostgreSQL with real threads.

Nothing is mocked: moves run through shards.moves.protocol against the test
shards, writers are threads with connections of their own, and every check
reads each shard's rows with plain SQL (tests.move_helpers), whatever this
process has cached.
"""

import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.cache import caches
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.utils import timezone

from core.models import MoveJob, Placement, Shard
from routers.placement import _key as placement_key
from routers.placement import remember_placement, shard_for_device
from shards.commands import create_command, deliver_pending, report_result
from shards.fence import write_for_device
from shards.ingest import _import_on_shard, import_upload_now, stage_upload
from shards.models import Command, MoveCapture, MoveChange, Reading, Upload
from shards.moves.cleanup import clean_up_due_moves, clean_up_move
from shards.moves.protocol import MoveVerificationFailed, move_device, start_move
from tests.factories import T0, make_device
from tests.move_helpers import (
    WAIT_TIMEOUT,
    Background,
    device_rows,
    fence_of,
    mover_waits_for_a_lock,
    populate_device,
    readings_for,
    row_counts,
    store_staged,
    total_rows,
)
from tests.waiting import wait_until

Phase = MoveJob.Phase
COMMANDS = Command._meta.db_table
READINGS = Reading._meta.db_table
UPLOADS = Upload._meta.db_table
# How long a test keeps the source fenced to show that a writer waits meanwhile.
HOLD_SECONDS = 0.3


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


# -- a plain move, cleanup ------------------------------------------------------------


@pytest.mark.parametrize("target", ["shard_2", "shard_3"])
def test_a_move_copies_every_row_with_its_id_and_state(three_shards, settings, target):
    settings.MOVE_CLEANUP_GRACE_SECONDS = 0
    device = make_device(shard="shard_1").device
    populated = populate_device(device)
    before = device_rows("shard_1", device.pk)
    counts = {table: len(rows) for table, rows in before.items()}
    assert all(counts.values()), counts  # every table has rows the move must carry
    epoch = Placement.objects.get(device=device).epoch

    job = move_device(device.pk, target)

    assert job.phase == Phase.RELEASED
    placement = Placement.objects.get(device=device)
    assert (placement.shard_id, placement.epoch) == (target, epoch + 1) == (target, job.epoch)
    assert shard_for_device(device) == target
    assert device_rows(target, device.pk) == before  # same ids, states, times, payloads
    assert device_rows("shard_1", device.pk) == before  # the source keeps them until cleanup
    bystander = ({"shard_2", "shard_3"} - {target}).pop()
    assert total_rows(bystander, device.pk) == 0
    assert fence_of(target, device.pk) == ("active", job.epoch)
    assert fence_of("shard_1", device.pk) == ("moved", job.epoch)
    assert fence_of(bystander, device.pk) is None
    assert job.verification["ok"] is True
    assert job.verification["mismatches"] == []
    assert {t: entry["rows"] for t, entry in job.verification["tables"].items()} == counts
    assert {t: entry["target_rows"] for t, entry in job.verification["tables"].items()} == counts
    assert job.rows_copied["bulk"] == counts
    assert job.rows_copied["remainder"] == {}  # nobody wrote meanwhile: nothing to copy again
    assert [p["tables"] for p in job.verification["changes"]["passes"]] == [{}]  # the fenced one
    assert job.stall_ms is not None and job.stall_ms > 0
    assert job.switched_at is not None and job.cleanup_after == job.switched_at

    # The upload staged before the move is imported where the device lives now, once.
    staged = populated.staged
    assert import_upload_now(device.pk, staged.pk) == Upload.Status.IMPORTED
    imported_rows = device_rows(target, device.pk)
    assert import_upload_now(device.pk, staged.pk) == Upload.Status.IMPORTED
    assert device_rows(target, device.pk) == imported_rows
    assert len(imported_rows[READINGS]) == counts[READINGS] + len(populated.staged_readings)
    assert Reading.objects.on_shard(target).filter(
        device_id=device.pk, value__gte=1000.0
    ).count() == len(populated.staged_readings)
    assert Upload.objects.on_shard(target).get(pk=staged.pk).status == Upload.Status.IMPORTED
    assert device_rows("shard_1", device.pk) == before  # the old copy is never written

    # A batch re-sent after the move is recognised on the new shard.
    for upload in (staged, populated.imported[0]):
        again = stage_upload(device.pk, upload.batch_id, readings_for(9000, 1))
        assert (again.created, again.upload.pk, again.alias) == (False, upload.pk, target)
    assert row_counts(target, device.pk)[UPLOADS] == counts[UPLOADS]

    cleaned = clean_up_due_moves()

    assert [done.pk for done in cleaned] == [job.pk]
    job.refresh_from_db()
    assert job.phase == Phase.DONE and job.finished_at is not None
    assert job.rows_copied["removed_from_source"] == counts
    assert total_rows("shard_1", device.pk) == 0
    assert device_rows(target, device.pk) == imported_rows
    assert clean_up_due_moves() == []


def test_cleanup_leaves_a_device_that_moved_back_alone(shards, settings):
    settings.MOVE_CLEANUP_GRACE_SECONDS = 0
    device = make_device(shard="shard_1").device
    populate_device(device)
    before = device_rows("shard_1", device.pk)

    there = move_device(device.pk, "shard_2")
    back = move_device(device.pk, "shard_1")

    assert (there.epoch, back.epoch) == (2, 3)
    assert Placement.objects.get(device=device).shard_id == "shard_1"
    assert fence_of("shard_1", device.pk) == ("active", 3)
    assert fence_of("shard_2", device.pk) == ("moved", 3)
    assert device_rows("shard_1", device.pk) == before  # ids unchanged there and back

    assert clean_up_move(there) == {}  # its source owns the device again: untouched
    there.refresh_from_db()
    assert there.phase == Phase.DONE
    assert there.rows_copied["removed_from_source"] == {}
    assert device_rows("shard_1", device.pk) == before

    assert [job.pk for job in clean_up_due_moves()] == [back.pk]
    assert device_rows("shard_1", device.pk) == before
    assert total_rows("shard_2", device.pk) == 0
    assert fence_of("shard_1", device.pk) == ("active", 3)


# -- writers and the fence -------------------------------------------------------------


def test_a_write_during_the_fenced_window_waits_and_lands_on_the_target(shards):
    device = make_device(shard="shard_1").device
    populate_device(device, uploads=1)
    writer = Background(lambda: create_command(device.pk, "held"), "held-writer")
    seen: dict[str, Any] = {}

    def hold_the_fence(job: MoveJob) -> None:
        if job.phase == Phase.FENCED:  # recorded: the source is fenced, nothing copied since
            writer.start()
            time.sleep(HOLD_SECONDS)
            seen["waiting"] = writer.is_alive()
            seen["fence"] = fence_of("shard_1", device.pk)
            seen["released_at"] = time.monotonic()

    job = move_device(device.pk, "shard_2", on_phase=hold_the_fence)
    command = writer.outcome()

    assert seen["waiting"], "the write went through a fenced source"
    assert seen["fence"] == ("fenced", 1)
    assert writer.finished_at is not None and writer.finished_at > seen["released_at"]
    assert command._state.db == "shard_2"
    assert Command.objects.on_shard("shard_2").filter(pk=command.pk, device_id=device.pk).exists()
    assert not Command.objects.on_shard("shard_1").filter(pk=command.pk).exists()
    assert job.stall_ms >= HOLD_SECONDS * 1000


@pytest.mark.parametrize("stale", ["local and Redis", "local only"])
def test_a_stale_cached_placement_is_turned_away_by_the_old_shard(shards, settings, stale):
    device = make_device(shard="shard_1").device
    populate_device(device, uploads=1)
    move_device(device.pk, "shard_2")
    key = placement_key(device.pk)
    if stale == "local and Redis":
        remember_placement(device, "shard_1")
    else:
        caches["local"].set(key, "shard_1", settings.PLACEMENT_LOCAL_TTL)
        assert caches["default"].get(key) == "shard_2"
    assert shard_for_device(device) == "shard_1"  # this process really believes the old shard
    tried = []

    def write(alias: str) -> Command:
        tried.append(alias)
        return Command.objects.on_shard(alias).create(device_id=device.pk, name="stale")

    command = write_for_device(device, write)

    assert tried == ["shard_2"]  # the old shard's fence refused before the write ran
    assert command._state.db == "shard_2"
    assert Command.objects.on_shard("shard_2").filter(pk=command.pk).exists()
    assert not Command.objects.on_shard("shard_1").filter(name="stale").exists()
    assert caches["local"].get(key) == "shard_2"
    assert caches["default"].get(key) == "shard_2"


def test_commands_keep_ids_and_states_and_a_polling_device_gets_each_once(shards):
    device = make_device(shard="shard_1").device
    populated = populate_device(device, uploads=1)
    settled = {populated.commands[s] for s in ("sent", "acknowledged", "succeeded", "failed")}
    settled.add(populated.commands["cancelled"])
    before = {row[0]: row for row in device_rows("shard_1", device.pk)[COMMANDS]}
    stop = threading.Event()
    created = [populated.commands["queued"]]
    delivered: list[int] = []

    def create() -> None:
        for n in itertools.count():
            if stop.is_set():
                return
            created.append(create_command(device.pk, f"during-{n}").pk)
            time.sleep(0.003)

    def poll() -> None:
        while not stop.is_set():
            for command in deliver_pending(device.pk):
                delivered.append(command.pk)
                report_result(device.pk, command.pk, "acknowledged")
            time.sleep(0.002)

    creator, poller = Background(create, "creator"), Background(poll, "poller")
    creator.start()
    poller.start()
    time.sleep(0.1)
    job = move_device(device.pk, "shard_2")
    time.sleep(0.1)
    stop.set()
    creator.outcome()
    poller.outcome()
    last = {command.pk for command in deliver_pending(device.pk)}  # created at the very end
    delivered.extend(last)
    assert deliver_pending(device.pk) == []

    assert job.phase == Phase.RELEASED
    assert len(delivered) == len(set(delivered)), "a command was delivered twice"
    assert sorted(delivered) == sorted(created), "a command was never delivered"
    after = {row[0]: row for row in device_rows("shard_2", device.pk)[COMMANDS]}
    assert set(after) == set(before) | set(created)
    assert {pk: after[pk] for pk in settled} == {pk: before[pk] for pk in settled}
    states = Command.objects.on_shard("shard_2").filter(pk__in=created)
    assert {c.pk: (c.status, c.attempts) for c in states} == {
        pk: ("sent" if pk in last else "acknowledged", 1) for pk in created
    }
    on_source = set(Command.objects.on_shard("shard_1").values_list("pk", flat=True))
    moved_with_the_device = {pk for pk in created if pk in on_source}
    written_after_switch = set(created) - on_source
    assert moved_with_the_device, "no command was created before the switch"
    assert written_after_switch, "no command was created after the switch"


def test_a_running_move_is_neither_resumed_nor_rolled_back_by_another_runner(shards):
    device = make_device(shard="shard_1").device
    populate_device(device, uploads=1)
    paused, go_on = threading.Event(), threading.Event()

    def pause(job: MoveJob) -> None:
        if job.phase == Phase.FENCED:
            paused.set()
            go_on.wait(WAIT_TIMEOUT)

    mover = Background(lambda: move_device(device.pk, "shard_2", on_phase=pause), "mover")
    mover.start()
    try:
        assert paused.wait(WAIT_TIMEOUT)
        job = MoveJob.objects.get(device=device)
        assert json.loads(run("move_device", "--resume", "--json")) == []
        with pytest.raises(CommandError, match=f"move job {job.pk} is being run by another"):
            run("move_device", "--rollback", str(job.pk))
        assert MoveJob.objects.get(pk=job.pk).phase == Phase.FENCED
    finally:
        go_on.set()

    assert mover.outcome().phase == Phase.RELEASED
    assert Placement.objects.get(device=device).shard_id == "shard_2"


# -- many writers, several moves -------------------------------------------------------


@dataclass
class Traffic:
    """What the writer threads of one device did, and what failed."""

    device_id: int
    stop: threading.Event
    commands: list[tuple[int, str, datetime]] = field(default_factory=list)
    delivered: list[int] = field(default_factory=list)
    reported: dict[int, str] = field(default_factory=dict)
    uploads: dict[str, tuple[int, str, list[dict[str, Any]]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def keep_going(self, what: str, step: Any) -> None:
        """Call step(n) until stopped, a few ms apart; any exception is a failed write."""
        for n in itertools.count():
            if self.stop.is_set():
                return
            try:
                step(n)
            except Exception as exc:
                with self.lock:
                    self.errors.append(f"{what} #{n}: {exc!r}")
            time.sleep(0.003)

    def create_commands(self) -> None:
        def step(n: int) -> None:
            command = create_command(self.device_id, f"c-{n}")
            with self.lock:
                self.commands.append((command.pk, command._state.db, timezone.now()))

        self.keep_going("create_command", step)

    def poll_commands(self) -> None:
        def step(_: int) -> None:
            for command in deliver_pending(self.device_id):
                status = "succeeded" if command.pk % 2 else "acknowledged"
                report_result(self.device_id, command.pk, status, {"n": command.pk})
                with self.lock:
                    self.delivered.append(command.pk)
                    self.reported[command.pk] = status

        self.keep_going("deliver_pending", step)

    def upload(self, thread: int, import_now: bool) -> None:
        def step(n: int) -> None:
            batch_id = f"d{self.device_id}-t{thread}-{n}"
            # Disjoint times per thread and batch: every reading is stored exactly once.
            readings = readings_for((thread * 100_000 + n) * 2, 2, base=float(n))
            staged = stage_upload(self.device_id, batch_id, readings)
            assert staged.created, f"batch {batch_id} was taken for a retry"
            with self.lock:
                self.uploads[batch_id] = (staged.upload.pk, staged.alias, readings)
            if import_now:
                status = import_upload_now(self.device_id, staged.upload.pk)
                assert status == Upload.Status.IMPORTED, status

        self.keep_going("stage_upload", step)


HOPS = ["shard_2", "shard_3", "shard_1"]


def move_around(device_id: int, hops: list[str]) -> list[MoveJob]:
    """Move a device along `hops`, pausing between moves so writes land on every shard."""
    jobs = []
    for target in hops:
        time.sleep(0.25)
        jobs.append(move_device(device_id, target))
    time.sleep(0.25)
    return jobs


def drive(devices: list[int], writers: list[Any]) -> tuple[list[Traffic], list[MoveJob]]:
    """Start the writers of every device, move each device around, stop the writers."""
    traffic = [Traffic(device_id, threading.Event()) for device_id in devices]
    threads = [
        Background(lambda t=t, work=work: work(t), f"{work.__name__}-{t.device_id}")
        for t in traffic
        for work in writers
    ]
    for thread in threads:
        thread.start()
    movers = [Background(lambda d=d: move_around(d, HOPS), f"mover-{d}") for d in devices]
    for mover in movers:
        mover.start()
    for mover in movers:
        mover.join(120)
    for t in traffic:
        t.stop.set()
    for thread in threads:
        thread.outcome()
    jobs = [job for mover in movers for job in mover.outcome()]  # a mover's error raises here
    return traffic, jobs


def check_jobs_and_clean_up(jobs: list[MoveJob], devices: list[int]) -> None:
    assert len(jobs) == len(devices) * len(HOPS)
    for job in jobs:
        assert job.phase == Phase.RELEASED, job
        assert job.verification["ok"] is True
        assert job.stall_ms is not None and job.stall_ms > 0
    assert {job.pk for job in clean_up_due_moves()} == {job.pk for job in jobs}
    for device_id in devices:
        assert Placement.objects.get(device_id=device_id).shard_id == "shard_1"
        assert fence_of("shard_1", device_id) == ("active", 1 + len(HOPS))
        for elsewhere in ("shard_2", "shard_3"):
            assert total_rows(elsewhere, device_id) == 0, elsewhere


def check_commands(t: Traffic, jobs: list[MoveJob]) -> None:
    t.delivered.extend(command.pk for command in deliver_pending(t.device_id))
    created = [pk for pk, _, _ in t.commands]
    assert len(t.delivered) == len(set(t.delivered)), "a command was delivered twice"
    assert set(t.delivered) == set(created), "a command was never delivered"
    stored = dict(
        Command.objects.on_shard("shard_1")
        .filter(device_id=t.device_id)
        .values_list("pk", "status")
    )
    assert set(stored) == set(created)
    assert {pk: stored[pk] for pk in t.reported} == t.reported
    # Writes went on before the first switch, between the moves and after the last one.
    assert {alias for _, alias, _ in t.commands} == {"shard_1", "shard_2", "shard_3"}
    switches = sorted(job.switched_at for job in jobs if job.device_id == t.device_id)
    done_at = [when for _, _, when in t.commands]
    assert min(done_at) < switches[0] and max(done_at) > switches[-1]


def test_command_writers_are_never_refused_while_devices_move_around(three_shards, settings):
    settings.MOVE_CLEANUP_GRACE_SECONDS = 0
    devices = [make_device(shard="shard_1").device.pk for _ in range(2)]

    traffic, jobs = drive(devices, [Traffic.create_commands, Traffic.poll_commands])

    assert [e for t in traffic for e in t.errors] == []
    check_jobs_and_clean_up(jobs, devices)
    for t in traffic:
        check_commands(t, jobs)


def _uploader(thread: int):
    def upload(t: Traffic) -> None:
        t.upload(thread, import_now=True)

    upload.__name__ = f"uploader{thread}"
    return upload


def test_uploads_and_imports_go_on_while_devices_move_around(three_shards, settings, celery_worker):
    settings.MOVE_CLEANUP_GRACE_SECONDS = 0
    devices = [make_device(shard="shard_1").device.pk for _ in range(2)]
    writers = [_uploader(0), _uploader(1), Traffic.create_commands, Traffic.poll_commands]

    traffic, jobs = drive(devices, writers)

    assert [e for t in traffic for e in t.errors] == []
    check_jobs_and_clean_up(jobs, devices)
    for t in traffic:
        check_commands(t, jobs)
        assert {alias for _, alias, _ in t.uploads.values()} == {"shard_1", "shard_2", "shard_3"}
        for upload_id, _, _ in t.uploads.values():  # the worker's copy of each task, too
            assert import_upload_now(t.device_id, upload_id) == Upload.Status.IMPORTED
        stored = dict(
            Upload.objects.on_shard("shard_1")
            .filter(device_id=t.device_id)
            .values_list("batch_id", "pk")
        )
        assert stored == {batch: pk for batch, (pk, _, _) in t.uploads.items()}
        expected = sorted(
            (r["metric"], r["ts"], r["value"])
            for _, _, readings in t.uploads.values()
            for r in readings
        )
        readings = sorted(
            Reading.objects.on_shard("shard_1")
            .filter(device_id=t.device_id)
            .values_list("metric", "ts", "value")
        )
        assert readings == expected  # every acknowledged reading, once, only here


# -- verification ---------------------------------------------------------------------


def test_a_copy_that_differs_is_rolled_back_and_the_row_is_named(shards):
    """The bulk copy is checked before the source is fenced: its writers never wait."""
    device = make_device(shard="shard_1").device
    populate_device(device, uploads=1)
    before = device_rows("shard_1", device.pk)
    stray_ts = T0 - timedelta(days=1)
    writer = Background(lambda: create_command(device.pk, "during"), "writer")

    def tamper(job: MoveJob) -> None:
        if job.phase == Phase.COPYING:  # before the bulk copy: a row only the target has
            with connections["shard_2"].cursor() as cursor:
                cursor.execute(
                    f"INSERT INTO {READINGS} (device_id, metric, ts, value)"
                    " VALUES (%s, 'stray', %s, -1)",
                    [device.pk, stray_ts],
                )
            writer.start()  # not held: the copy fails before any fence

    with pytest.raises(MoveVerificationFailed) as failure:
        move_device(device.pk, "shard_2", on_phase=tamper)

    message = str(failure.value)
    assert f"{READINGS} {device.pk}/stray/" in message and "only on target" in message
    job = MoveJob.objects.get(device=device)
    assert job.phase == Phase.FAILED and job.finished_at is not None
    assert job.fenced_at is None and job.stall_ms is None  # writers never waited
    assert job.error == message
    assert job.verification["ok"] is False
    [mismatch] = job.verification["mismatches"]
    assert mismatch["table"] == READINGS and mismatch["problem"] == "only on target"
    assert mismatch["key"].startswith(f"{device.pk}/stray/")
    failed_tables = {t for t, entry in job.verification["tables"].items() if not entry["ok"]}
    assert failed_tables == {READINGS}
    placement = Placement.objects.get(device=device)
    assert (placement.shard_id, placement.epoch) == ("shard_1", 1)
    assert fence_of("shard_1", device.pk) == ("active", 1)
    assert fence_of("shard_2", device.pk) is None
    assert total_rows("shard_2", device.pk) == 0
    assert not MoveCapture.objects.on_shard("shard_1").exists()  # the change log is gone
    assert not MoveChange.objects.on_shard("shard_1").exists()

    command = writer.outcome()
    assert command._state.db == "shard_1"
    after = device_rows("shard_1", device.pk)
    assert [row for row in after[COMMANDS] if row[0] != command.pk] == before[COMMANDS]
    assert {t: rows for t, rows in after.items() if t != COMMANDS} == {
        t: rows for t, rows in before.items() if t != COMMANDS
    }

    again = move_device(device.pk, "shard_2")  # nothing is left in the way of a new try
    assert again.phase == Phase.RELEASED
    assert device_rows("shard_2", device.pk) == after


def test_an_import_in_flight_at_the_bulk_snapshot_is_copied(shards):
    device = make_device(shard="shard_1").device
    neighbour = make_device(shard="shard_1").device
    upload = store_staged(device.pk, "in-flight", readings_for(0, 10))
    written, commit = threading.Event(), threading.Event()

    def import_and_hold(alias: str) -> str:
        status = _import_on_shard(alias, device.pk, upload.pk)  # the import task's own body
        written.set()
        commit.wait(WAIT_TIMEOUT)  # still uncommitted while the bulk snapshot is taken
        return status

    importer = Background(lambda: write_for_device(device.pk, import_and_hold), "importer")

    def commit_once_the_mover_waits() -> None:
        wait_until(lambda: mover_waits_for_a_lock("shard_1"), "the fence to wait for the import")
        commit.set()

    releaser = Background(commit_once_the_mover_waits, "releaser")

    def start_import(job: MoveJob) -> None:
        if job.phase == Phase.COPYING:  # source fence 'copying': writes go on
            importer.start()
            written.wait(WAIT_TIMEOUT)
            # Any later transaction committing before the snapshot (another device's
            # command here) puts the snapshot's xmax past the import's subtransaction.
            create_command(neighbour.pk, "unrelated")
            releaser.start()

    try:
        job = move_device(device.pk, "shard_2", on_phase=start_import)
    finally:
        commit.set()
        assert importer.outcome() == Upload.Status.IMPORTED
        releaser.join(WAIT_TIMEOUT)

    assert job.phase == Phase.RELEASED
    assert device_rows("shard_2", device.pk) == device_rows("shard_1", device.pk)
    assert Reading.objects.on_shard("shard_2").filter(device_id=device.pk).count() == 30


# -- the management command's refusals and output --------------------------------------


@pytest.mark.parametrize(
    ("situation", "args", "message"),
    [
        ("", ["no-such-device", "shard_2"], "no device with serial or id 'no-such-device'"),
        ("", ["{serial}", "shard_9"], "shard 'shard_9' is not registered"),
        ("", ["{serial}", "shard_1"], r"device \d+ is already on shard_1"),
        ("draining", ["{serial}", "shard_3"], "shard shard_3 is draining"),
        ("in flight", ["{serial}", "shard_2"], r"device \d+ is already being moved by job \d+"),
        ("", ["{serial}"], "give the device and the shard"),
        ("", ["{serial}", "shard_2", "--resume"], "give DEVICE SHARD, or one of"),
        ("", ["--resume", "--list"], "give DEVICE SHARD, or one of"),
        ("", ["--rollback", "999999"], "no move job 999999"),
    ],
)
def test_move_device_refusals_say_what_is_wrong(three_shards, situation, args, message):
    device = make_device(shard="shard_1").device
    populate_device(device, uploads=1)
    before = device_rows("shard_1", device.pk)
    if situation == "draining":
        Shard.objects.filter(alias="shard_3").update(state=Shard.State.DRAINING)
    jobs = [start_move(device.pk, "shard_3").pk] if situation == "in flight" else []

    with pytest.raises(CommandError, match=message):
        run("move_device", *(arg.format(serial=device.serial) for arg in args))

    assert list(MoveJob.objects.values_list("pk", flat=True)) == jobs
    assert Placement.objects.get(device=device).shard_id == "shard_1"
    assert fence_of("shard_1", device.pk) == ("active", 1)
    assert device_rows("shard_1", device.pk) == before
    for elsewhere in ("shard_2", "shard_3"):
        assert total_rows(elsewhere, device.pk) == 0


def test_move_device_json_reports_the_job(shards):
    device = make_device(shard="shard_1").device
    populate_device(device, uploads=1)
    counts = row_counts("shard_1", device.pk)

    [summary] = json.loads(run("move_device", device.serial, "shard_2", "--json"))

    job = MoveJob.objects.get(device=device)
    assert summary["job"] == job.pk
    assert (summary["device"], summary["source"], summary["target"]) == (
        device.pk,
        "shard_1",
        "shard_2",
    )
    assert summary["phase"] == Phase.RELEASED
    assert summary["verification"]["ok"] is True
    assert summary["rows_moved"] == sum(counts.values())
    assert summary["stall_ms"] == job.stall_ms
    assert summary["error"] == ""
    listed = json.loads(run("move_device", "--list", "--json"))
    assert [(entry["job"], entry["phase"]) for entry in listed] == [(job.pk, Phase.RELEASED)]
    human = run("move_device", "--list")
    assert f"move {job.pk}: device {device.pk} shard_1 -> shard_2 [released]" in human


def move_while_writing(device_id: int, write: Callable[[], object]) -> MoveJob:
    """Move the device to shard_2 while a thread calls `write` over and over until it returns."""
    moving = threading.Event()

    def write_while_moving() -> None:
        while not moving.is_set():
            write()

    writer = threading.Thread(target=write_while_moving)
    writer.start()
    try:
        return move_device(device_id, "shard_2")
    finally:
        moving.set()
        writer.join()


def test_rows_changed_during_the_copy_are_copied_and_checked_by_key(shards):
    """Rows written while the device is copied are logged, copied by key and checked."""
    device = make_device(shard="shard_1").device
    populate_device(device, uploads=20, per_upload=200)  # a bulk copy that takes a while
    written: list[int] = []
    job = move_while_writing(
        device.pk, lambda: written.append(create_command(device.pk, "during").pk)
    )

    assert job.phase == Phase.RELEASED and job.verification["ok"] is True
    checked = [
        p["tables"][COMMANDS]["changed_rows"]
        for p in job.verification["changes"]["passes"]
        if COMMANDS in p["tables"]
    ]
    assert checked and sum(checked) >= 1  # some writes came after the bulk snapshot
    commands_there = {row[0] for row in device_rows("shard_2", device.pk)[COMMANDS]}
    commands_here = {row[0] for row in device_rows("shard_1", device.pk)[COMMANDS]}
    assert set(written) <= commands_there  # copied, or written there after the switch
    assert commands_here <= commands_there  # every write before the release was carried
    assert not MoveChange.objects.on_shard("shard_1").exists()  # the log went with the move


def test_a_pass_whose_copy_differs_from_the_source_is_caught(shards):
    from shards.moves.capture import start_capture
    from shards.moves.copying import copy_changed_rows
    from shards.moves.streams import raw_connections
    from shards.moves.tables import device_tables
    from shards.moves.verify import verify_changed_rows

    device = make_device(shard="shard_1").device
    with raw_connections("shard_1") as (source,):
        with source.cursor() as cursor:
            start_capture(cursor, device.pk)
        source.commit()
    command = create_command(device.pk, "logged")  # a change, logged
    tables = device_tables()
    with raw_connections("shard_1", "shard_2") as (source, target):
        _, _, hashes = copy_changed_rows(source, target, device.pk, tables, since=0)
        assert verify_changed_rows(hashes, target, device.pk, tables).ok
        with target.cursor() as cursor:
            cursor.execute(f"UPDATE {COMMANDS} SET name = 'damaged' WHERE id = %s", [command.pk])
        target.commit()
        damaged = verify_changed_rows(hashes, target, device.pk, tables)
    assert not damaged.ok
    assert damaged.mismatches == [{"table": COMMANDS, "key": str(command.pk), "problem": "differs"}]


@pytest.mark.parametrize("few_rows", [0, 1000], ids=["staged-copy", "json"])
def test_both_ways_of_carrying_changed_rows_copy_them_exactly(shards, monkeypatch, few_rows):
    """Changed rows travel as one JSON value when few, through a staged COPY when many."""
    import shards.moves.copying as copying

    monkeypatch.setattr(copying, "FEW_ROWS", few_rows)
    device = make_device(shard="shard_1").device
    populate_device(device, uploads=20, per_upload=200)
    job = move_while_writing(
        device.pk,
        lambda: create_command(device.pk, "during", {"nested": {"x": [1.5, None, "é"]}}),
    )
    assert job.phase == Phase.RELEASED and job.verification["ok"] is True
    assert device_rows("shard_2", device.pk) == device_rows("shard_1", device.pk) | {
        COMMANDS: device_rows("shard_2", device.pk)[COMMANDS]  # later writes land there only
    }
