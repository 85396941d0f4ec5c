"""The import of a shard's staged uploads many at a time, and the kicks that queue it.

Uploads here are stored staged without a kick (tests.test_ingest.store_staged) and
imported by calling the claim in this process, so what each claim took is known;
the kick tests use the session's real worker and the test broker.
"""

import threading

import redis
from django.conf import settings
from django.db import connections, transaction

from shards.import_queue import KICK_TTL_SECONDS, kick_import
from shards.ingest import import_staged, import_staged_batch, stage_upload
from shards.models import DeviceFence, LatestValue, Reading, Upload
from tests.factories import make_device
from tests.querylog import queries_by_alias
from tests.test_ingest import (
    METRICS,
    corrupt_payload,
    newest_per_metric,
    readings_at,
    seconds,
    store_staged,
    wait_until_imported,
)
from tests.waiting import wait_until


def statuses(alias: str) -> dict[str, str]:
    return dict(Upload.objects.on_shard(alias).values_list("batch_id", "status"))


def test_one_claim_imports_many_devices_uploads_in_one_statement(shards):
    devices = [make_device(shard="shard_1").device for _ in range(3)]
    for device in devices:
        for n in range(4):
            store_staged(device.pk, f"b{n}", readings_at(seconds(10 * n, 10 * n + 10)))

    with queries_by_alias() as log:
        assert import_staged_batch("shard_1", 100) == (12, False)

    imports = [sql for sql in log["shard_1"] if "jsonb_to_recordset" in sql]
    assert len(imports) == 1
    assert set(statuses("shard_1").values()) == {Upload.Status.IMPORTED}
    for device in devices:
        assert Reading.objects.for_device(device).count() == 4 * 10 * len(METRICS)
        assert set(Upload.objects.for_device(device).values_list("stored_count", flat=True)) == {
            10 * len(METRICS)
        }


def test_overlapping_uploads_in_one_claim_store_the_first_staged_and_count_it_there(shards):
    device = make_device(shard="shard_2").device
    first = readings_at(seconds(0, 30), base=0.0)
    second = readings_at(seconds(20, 50), base=1000.0)  # 10 s overlap, different values
    store_staged(device.pk, "first", first)
    store_staged(device.pk, "second", second)

    assert import_staged_batch("shard_2", 100) == (2, False)

    stored = dict(Upload.objects.for_device(device).values_list("batch_id", "stored_count"))
    assert stored == {"first": 30 * len(METRICS), "second": 20 * len(METRICS)}
    values = Reading.objects.for_device(device).values_list("value", flat=True)
    assert len(values) == 50 * len(METRICS)
    assert sum(value >= 1000 for value in values) == 20 * len(METRICS)
    latest = LatestValue.objects.for_device(device).values_list("metric", "ts", "value")
    assert {m: (ts, v) for m, ts, v in latest} == newest_per_metric(second)


def test_a_claim_takes_the_oldest_uploads_up_to_its_limit(shards):
    device = make_device(shard="shard_1").device
    for n in range(5):
        store_staged(device.pk, f"b{n}", readings_at(seconds(n, n + 1)))

    assert import_staged_batch("shard_1", 2) == (2, True)
    assert statuses("shard_1") == {
        "b0": "imported", "b1": "imported", "b2": "staged", "b3": "staged", "b4": "staged",
    }  # fmt: skip

    assert import_staged("shard_1", batch=2, budget_seconds=60) == (3, False)
    assert set(statuses("shard_1").values()) == {"imported"}


def test_a_claim_stops_at_its_readings_but_always_takes_one(shards):
    device = make_device(shard="shard_1").device
    for n in range(4):
        store_staged(device.pk, f"b{n}", readings_at(seconds(10 * n, 10 * n + 10)))  # 30 each

    assert import_staged_batch("shard_1", 100, max_readings=70) == (2, True)
    assert statuses("shard_1") == {
        "b0": "imported", "b1": "imported", "b2": "staged", "b3": "staged",
    }  # fmt: skip
    assert import_staged_batch("shard_1", 100, max_readings=10) == (1, True)
    assert import_staged("shard_1", batch=100, budget_seconds=60, max_readings=70) == (1, False)
    assert set(statuses("shard_1").values()) == {"imported"}


def test_a_run_out_of_time_says_uploads_are_left(shards):
    device = make_device(shard="shard_1").device
    for n in range(5):
        store_staged(device.pk, f"b{n}", readings_at(seconds(n, n + 1)))

    assert import_staged("shard_1", batch=2, budget_seconds=0) == (2, True)


def test_a_bad_upload_in_a_claim_fails_alone(shards):
    device = make_device(shard="shard_1").device
    uploads = [store_staged(device.pk, f"b{n}", readings_at(seconds(n, n + 1))) for n in range(3)]
    corrupt_payload(
        "shard_1",
        uploads[1].pk,
        """'[{"ts": "soon", "metric": "temp", "value": 1}, {"ts": "later", "metric": "temp",
        "value": 2}, {"ts": "never", "metric": "temp", "value": 3}]'::jsonb""",
    )

    assert import_staged_batch("shard_1", 100) == (3, False)

    assert statuses("shard_1") == {"b0": "imported", "b1": "failed", "b2": "imported"}
    assert "timestamp" in Upload.objects.for_device(device).get(batch_id="b1").error
    assert Reading.objects.for_device(device).count() == 2 * len(METRICS)


def hold_fence_as_a_mover(alias: str, device_id: int, release: threading.Event) -> threading.Event:
    """Hold the device's fence row locked as a mover fencing it does, until `release`."""
    held = threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
                cursor.execute(
                    "SELECT 1 FROM shards_devicefence WHERE device_id = %s FOR NO KEY UPDATE",
                    [device_id],
                )
                held.set()
                release.wait(30)
        finally:
            connections.close_all()

    threading.Thread(target=hold, daemon=True).start()
    assert held.wait(10)
    return held


def test_a_claim_skips_devices_the_shard_does_not_serve_or_a_mover_holds(shards):
    served, moved, fenced, held = (make_device(shard="shard_1").device for _ in range(4))
    for device in (served, moved, fenced, held):
        store_staged(device.pk, f"of-{device.pk}", readings_at(seconds(0, 1)))
    fences = DeviceFence.objects.on_shard("shard_1")
    fences.filter(device_id=moved.pk).update(state=DeviceFence.State.MOVED)
    fences.filter(device_id=fenced.pk).update(state=DeviceFence.State.FENCED)
    release = threading.Event()
    hold_fence_as_a_mover("shard_1", held.pk, release)
    try:
        assert import_staged_batch("shard_1", 100).imported == 1
    finally:
        release.set()

    def status(device) -> str:
        return Upload.objects.on_shard("shard_1").get(device_id=device.pk).status

    assert [status(d) for d in (served, moved, fenced, held)] == [
        "imported", "staged", "staged", "staged",
    ]  # fmt: skip
    wait_until(lambda: import_staged_batch("shard_1", 100).imported == 1, what="the lock to go")
    assert [status(d) for d in (moved, fenced, held)] == ["staged", "staged", "imported"]


def broker_queue_length() -> int:
    return redis.Redis.from_url(settings.CELERY_BROKER_URL).llen(settings.CELERY_TASK_DEFAULT_QUEUE)


def test_uploads_in_a_row_queue_one_import_task(shards, celery_worker):
    device = make_device(shard="shard_2").device
    celery_worker.stop()
    try:
        assert broker_queue_length() == 0
        staged = [
            stage_upload(device.pk, f"b{n}", readings_at(seconds(n, n + 1))).upload
            for n in range(10)
        ]
        assert broker_queue_length() == 1
    finally:
        celery_worker.start()
    for upload in staged:
        wait_until_imported(device.pk, upload.pk)
    assert Reading.objects.for_device(device).count() == 10 * len(METRICS)


def test_the_import_clears_its_kick_so_the_next_upload_queues_another(shards, celery_worker):
    device = make_device(shard="shard_1").device
    first = stage_upload(device.pk, "first", readings_at(seconds(0, 1))).upload
    wait_until_imported(device.pk, first.pk)

    # Well within the key's life (KICK_TTL_SECONDS): only the task that imported `first`
    # releasing its key when it finished lets a kick queue another.
    wait_until(
        lambda: kick_import("shard_1"),
        timeout=KICK_TTL_SECONDS / 2,
        what="the import task to release its kick",
    )
    second = stage_upload(device.pk, "second", readings_at(seconds(1, 2))).upload
    wait_until_imported(device.pk, second.pk)
