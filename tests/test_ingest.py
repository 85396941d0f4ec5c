"""Ingest end to end: staging on the device's shard, import by a real Celery worker.

Every check reads the stored rows back (for_device/on_shard or raw SQL). Tests
that call import_upload_now themselves store their uploads without queueing a
task, so the session's worker cannot race them.
"""

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
from django.db import connections

from cluster.ports import free_port
from core import local_cluster
from shards.import_queue import kick_import
from shards.ingest import import_upload_now, payload_of, stage_upload
from shards.models import DeviceStatus, LatestValue, Reading, Upload
from shards.tasks import kick_all_imports
from tests.factories import T0, make_device
from tests.process_env import child_process_env
from tests.querylog import queries_by_alias
from tests.waiting import wait_until
from tests.worker import CeleryWorker

IMPORT_TIMEOUT = 30.0
METRICS = ("temp", "humidity", "pressure")


def readings_at(times: list[datetime], metrics=METRICS, base: float = 0.0) -> list[dict]:
    """One reading per metric and time; the value encodes both, so rows are recognisable."""
    return [
        {"ts": ts, "metric": metric, "value": base + index + 0.25 * m}
        for index, ts in enumerate(times)
        for m, metric in enumerate(metrics)
    ]


def seconds(start: int, stop: int, origin: datetime = T0) -> list[datetime]:
    return [origin + timedelta(seconds=s) for s in range(start, stop)]


def store_staged(device_id: int, batch_id: str, readings: list[dict]) -> Upload:
    """A staged upload written directly: no import task is queued for it."""
    payload = payload_of(readings)
    return Upload.objects.for_device(device_id).create(
        device_id=device_id, batch_id=batch_id, payload=payload, reading_count=len(payload)
    )


def status_of(device_id: int, upload_id: int) -> str:
    return Upload.objects.for_device(device_id).get(pk=upload_id).status


def wait_until_imported(device_id: int, upload_id: int) -> None:
    wait_until(
        lambda: status_of(device_id, upload_id) != Upload.Status.STAGED,
        what=f"upload {upload_id} to be imported",
    )
    assert status_of(device_id, upload_id) == Upload.Status.IMPORTED


def stored_readings(device_id: int) -> list[tuple]:
    return list(
        Reading.objects.for_device(device_id)
        .order_by("metric", "ts")
        .values_list("metric", "ts", "value")
    )


def latest_values(device_id: int) -> dict[str, tuple[datetime, float]]:
    rows = LatestValue.objects.for_device(device_id).values_list("metric", "ts", "value")
    return {metric: (ts, value) for metric, ts, value in rows}


def newest_per_metric(readings: list[dict]) -> dict[str, tuple[datetime, float]]:
    newest: dict[str, tuple[datetime, float]] = {}
    for r in readings:
        if r["metric"] not in newest or r["ts"] > newest[r["metric"]][0]:
            newest[r["metric"]] = (r["ts"], r["value"])
    return newest


def test_staged_upload_is_stored_once_and_imported_by_the_worker(shards, celery_worker):
    device = make_device(shard="shard_2").device
    readings = readings_at(seconds(0, 50))

    staged = stage_upload(device.pk, "batch-1", readings)

    assert staged.created is True
    assert staged.alias == "shard_2"
    assert staged.upload.reading_count == 150
    assert Upload.objects.on_shard("shard_1").count() == 0
    assert list(Upload.objects.on_shard("shard_2").values_list("id", flat=True)) == [
        staged.upload.pk
    ]

    retried = stage_upload(device.pk, "batch-1", readings_at(seconds(100, 101)))
    assert retried.created is False
    assert retried.upload.pk == staged.upload.pk
    assert retried.upload.reading_count == 150  # the original, not the retry's readings
    assert Upload.objects.for_device(device).count() == 1

    wait_until_imported(device.pk, staged.upload.pk)
    assert Reading.objects.for_device(device).count() == 150
    assert Reading.objects.on_shard("shard_1").count() == 0
    assert latest_values(device.pk) == newest_per_metric(readings)
    status = DeviceStatus.objects.for_device(device).get()
    assert status.last_seen_at is not None
    assert status.last_upload_id == staged.upload.pk
    upload = Upload.objects.for_device(device).get()
    assert upload.imported_at is not None
    assert upload.error == ""


def test_concurrent_copies_of_one_batch_store_one_upload(shards):
    device = make_device(shard="shard_1").device
    readings = readings_at(seconds(0, 10))

    def stage_in_thread(_: int):
        try:
            return stage_upload(device.pk, "same-batch", readings)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(stage_in_thread, range(8)))

    assert sum(result.created for result in results) == 1
    assert {result.upload.pk for result in results} == {results[0].upload.pk}
    assert Upload.objects.for_device(device).count() == 1


def test_staging_makes_no_directory_query_with_a_warm_placement_cache(shards):
    new = make_device(shard="shard_1")  # create_device publishes the placement

    with queries_by_alias() as log:
        stage_upload(new.device.pk, "warm", readings_at(seconds(0, 5)))

    assert log.count("default") == 0
    assert log.aliases() == {"shard_1"}


def test_importing_again_changes_nothing(shards):
    device = make_device(shard="shard_1").device
    upload = store_staged(device.pk, "b", readings_at(seconds(0, 20)))
    assert import_upload_now(device.pk, upload.pk) == "imported"
    before = (
        stored_readings(device.pk),
        latest_values(device.pk),
        Upload.objects.for_device(device).get().imported_at,
        DeviceStatus.objects.for_device(device).values_list("last_seen_at", "updated_at").get(),
    )

    assert import_upload_now(device.pk, upload.pk) == "imported"

    after = (
        stored_readings(device.pk),
        latest_values(device.pk),
        Upload.objects.for_device(device).get().imported_at,
        DeviceStatus.objects.for_device(device).values_list("last_seen_at", "updated_at").get(),
    )
    assert after == before
    assert len(before[0]) == 60


def test_overlapping_uploads_store_each_reading_once(shards):
    device = make_device(shard="shard_2").device
    first = readings_at(seconds(0, 30), base=0.0)
    second = readings_at(seconds(20, 50), base=1000.0)  # 10 s overlap, different values
    for batch_id, readings in (("first", first), ("second", second)):
        upload = store_staged(device.pk, batch_id, readings)
        assert import_upload_now(device.pk, upload.pk) == "imported"

    stored = stored_readings(device.pk)
    assert len(stored) == 50 * len(METRICS)
    assert len({(metric, ts) for metric, ts, _ in stored}) == len(stored)
    with connections["shard_2"].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM shards_reading WHERE device_id = %s AND value >= 1000",
            [device.pk],
        )
        from_second = cursor.fetchone()[0]
    assert from_second == 20 * len(METRICS)  # only the 20 s the first upload did not cover
    assert latest_values(device.pk) == newest_per_metric(second)


def test_an_older_batch_does_not_overwrite_newer_latest_values(shards):
    device = make_device(shard="shard_1").device
    newer = readings_at(seconds(3600, 3610), base=500.0)
    older = readings_at(seconds(0, 10), base=1.0)
    for batch_id, readings in (("newer", newer), ("older", older)):
        upload = store_staged(device.pk, batch_id, readings)
        assert import_upload_now(device.pk, upload.pk) == "imported"

    assert latest_values(device.pk) == newest_per_metric(newer)
    assert Reading.objects.for_device(device).count() == 20 * len(METRICS)
    status = DeviceStatus.objects.for_device(device).get()
    assert status.last_upload_id == Upload.objects.for_device(device).get(batch_id="older").pk


def corrupt_payload(alias: str, upload_id: int, payload_sql: str) -> None:
    with connections[alias].cursor() as cursor:
        cursor.execute(
            f"UPDATE shards_upload SET payload = {payload_sql} WHERE id = %s", [upload_id]
        )


# The upload holds 2 readings; each payload keeps that count so only its content is bad.
CORRUPTIONS = {
    "bad time": (
        """'[{"ts": "yesterday-ish", "metric": "temp", "value": 1},
             {"ts": "2026-01-01T00:00:00+00:00", "metric": "temp", "value": 2}]'""",
        "timestamp",
    ),
    "missing value": (
        """'[{"ts": "2026-01-01T00:00:00+00:00", "metric": "temp"},
             {"ts": "2026-01-01T00:00:01+00:00", "metric": "temp", "value": 2}]'""",
        "value",
    ),
    "text value": (
        """'[{"ts": "2026-01-01T00:00:00+00:00", "metric": "temp", "value": "hot"},
             {"ts": "2026-01-01T00:00:01+00:00", "metric": "temp", "value": 2}]'""",
        "double precision",
    ),
    "not a list": ("""'{"ts": "2026-01-01T00:00:00+00:00"}'""", "not a list"),
    "wrong count": ("""'[]'""", "reading_count"),
    "entries not objects": ("""'[1, 2]'""", "object"),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupt_payload_marks_the_upload_failed(shards, corruption):
    payload_sql, hint = CORRUPTIONS[corruption]
    device = make_device(shard="shard_1").device
    upload = store_staged(device.pk, "b", readings_at(seconds(0, 2), metrics=("temp",)))
    corrupt_payload("shard_1", upload.pk, f"{payload_sql}::jsonb")

    assert import_upload_now(device.pk, upload.pk) == "failed"

    stored = Upload.objects.for_device(device).get()
    assert stored.status == Upload.Status.FAILED
    assert stored.error.startswith("payload cannot be imported: ")
    assert hint in stored.error
    assert stored.imported_at is None
    assert Reading.objects.for_device(device).count() == 0
    assert LatestValue.objects.for_device(device).count() == 0
    assert DeviceStatus.objects.for_device(device).count() == 0


def test_the_worker_marks_a_corrupt_upload_failed_without_raising(shards, celery_worker):
    device = make_device(shard="shard_2").device
    upload = store_staged(device.pk, "b", readings_at(seconds(0, 2), metrics=("temp",)))
    corrupt_payload("shard_2", upload.pk, CORRUPTIONS["bad time"][0] + "::jsonb")

    assert kick_import("shard_2") is True

    wait_until(lambda: status_of(device.pk, upload.pk) == "failed", what="the import to fail")
    assert "timestamp" in Upload.objects.for_device(device).get().error
    assert Reading.objects.for_device(device).count() == 0


def stage_with_broker_down(device_id: int, batch_id: str) -> dict:
    """Stage from a separate process whose broker does not listen; returns what it printed."""
    script = (
        "import django, json; django.setup()\n"
        "from shards.ingest import stage_upload\n"
        "from tests.factories import T0\n"
        f"staged = stage_upload({device_id}, {batch_id!r},"
        " [{'ts': T0, 'metric': 'temp', 'value': 20.5}])\n"
        "print(json.dumps({'id': staged.upload.pk, 'created': staged.created}))\n"
    )
    env = {**child_process_env(), "CELERY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=local_cluster.REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return {
        **json.loads(proc.stdout.strip().splitlines()[-1]),
        "stderr": proc.stderr,
        "seconds": time.monotonic() - started,
    }


def test_upload_staged_while_the_broker_is_down_is_imported_after_beats_kick(shards, celery_worker):
    device = make_device(shard="shard_1").device

    staged = stage_with_broker_down(device.pk, "while-broker-down")

    assert staged["created"] is True
    assert "could not queue the import of shard_1" in staged["stderr"]
    assert status_of(device.pk, staged["id"]) == Upload.Status.STAGED
    time.sleep(1)  # nothing is coming for it
    assert status_of(device.pk, staged["id"]) == Upload.Status.STAGED

    assert sorted(kick_all_imports()) == ["shard_1", "shard_2"]

    wait_until_imported(device.pk, staged["id"])
    assert Reading.objects.for_device(device).count() == 1


def beat_kicks() -> bool:
    """What beat does every few seconds in a cluster: kick an import of every shard."""
    return bool(kick_all_imports())


def count_on(alias: str, sql: str) -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


def uploads_with_status(status: str) -> int:
    sql = f"SELECT count(*) FROM shards_upload WHERE status = '{status}'"
    return sum(count_on(alias, sql) for alias in ("shard_1", "shard_2"))


def no_transaction_in_flight() -> bool:
    """No other session on either shard is still working: a COMMIT a killed worker had
    already sent completes in PostgreSQL after the kill, so counts settle only then."""
    sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND state IS NOT NULL AND state <> 'idle'"
    )
    return all(count_on(alias, sql) == 0 for alias in ("shard_1", "shard_2"))


@pytest.mark.slow
def test_worker_killed_mid_backlog_loses_and_doubles_nothing(shards, celery_worker: CeleryWorker):
    uploads_per_device, readings_per_upload = 100, 500
    metrics = tuple(f"m{i}" for i in range(10))
    times_per_upload = readings_per_upload // len(metrics)
    devices = [make_device(shard="shard_1").device, make_device(shard="shard_2").device]

    celery_worker.stop()  # stage the whole backlog first, so the kill lands mid-way
    try:
        for device in devices:
            for n in range(uploads_per_device):
                start = n * times_per_upload
                readings = readings_at(
                    seconds(start, start + times_per_upload), metrics=metrics, base=start
                )
                assert stage_upload(device.pk, f"backlog-{n}", readings).created
        total_uploads = uploads_per_device * len(devices)
        assert uploads_with_status("staged") == total_uploads

        # Small claims, so the backlog takes many transactions and the kill lands among them.
        small_claims = CeleryWorker(env={"IMPORT_BATCH_UPLOADS": "5"})
        small_claims.start()
        try:
            wait_until(lambda: uploads_with_status("imported") >= 10, what="the import to begin")
        finally:
            small_claims.kill()
        wait_until(no_transaction_in_flight, timeout=30, what="the killed worker's last commit")
        left = uploads_with_status("staged")
        assert 0 < left < total_uploads, "the kill did not land mid-backlog"
        # The killed worker's claims rolled back; its tasks stay unacknowledged until the
        # visibility timeout, so the uploads left wait for a kick (beat's, in a cluster).
    finally:
        celery_worker.start()
    wait_until(
        lambda: beat_kicks() and uploads_with_status("imported") == total_uploads,
        timeout=180,
        what="the whole backlog to be imported",
    )

    assert uploads_with_status("failed") == 0
    expected_per_device = uploads_per_device * readings_per_upload
    for device in devices:
        assert Reading.objects.for_device(device).count() == expected_per_device
        distinct = count_on(
            Reading.objects.for_device(device).db,
            "SELECT count(DISTINCT (metric, ts)) FROM shards_reading"
            f" WHERE device_id = {device.pk}",
        )
        assert distinct == expected_per_device
        last_start = (uploads_per_device - 1) * times_per_upload
        newest = readings_at(
            seconds(last_start, last_start + times_per_upload), metrics=metrics, base=last_start
        )
        assert latest_values(device.pk) == newest_per_metric(newest)


def sessions_opened(alias: str) -> int:
    """Sessions ever opened to the shard's database (PostgreSQL's own count)."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        return cursor.fetchone()[0]


def test_the_worker_keeps_its_shard_connections_between_imports(shards, celery_worker):
    """An import is a few milliseconds of SQL; opening a connection for each cost more
    than the import (Celery's Django fixup closes every connection after each task)."""
    device = make_device(shard="shard_1").device
    stage_upload(device.pk, "warm-up", readings_at(seconds(0, 1)))  # both pool processes
    stage_upload(device.pk, "warm-up-2", readings_at(seconds(1, 2)))  # connect once
    wait_until(
        lambda: not Upload.objects.for_device(device).filter(status="staged").exists(),
        what="the warm-up imports",
    )
    time.sleep(1.5)  # PostgreSQL counts a session at most a second after it opens
    before = sessions_opened("shard_1")

    uploads = [
        stage_upload(device.pk, f"batch-{n}", readings_at(seconds(10 + n, 11 + n))).upload
        for n in range(20)
    ]
    for upload in uploads:
        wait_until_imported(device.pk, upload.pk)
    time.sleep(1.5)

    # This test process opens none; the worker may open one per pool process at most.
    assert sessions_opened("shard_1") - before <= 2
