"""Analysis as Celery runs it: beat's entry on a real worker; one run per shard at a time."""

import threading
from datetime import timedelta
from typing import Any

from django.db import connections, transaction
from django.utils import timezone

from core.models import Device
from shards.analysis.run import analyse_shard
from shards.models import Alert, DeviceStatus, Reading
from shards.tasks import analyse_all_shards
from tests.factories import make_device
from tests.waiting import wait_until

WAIT = 60.0


def silent_device(alias: str) -> int:
    device = make_device(shard=alias).device
    Device.objects.filter(pk=device.pk).update(report_interval_s=60)
    seen = timezone.now() - timedelta(minutes=10)
    DeviceStatus.objects.on_shard(alias).create(device_id=device.pk, last_seen_at=seen)
    return device.pk


def open_offline_alerts(alias: str) -> list[int]:
    alerts = Alert.objects.on_shard(alias).filter(condition="offline", state=Alert.State.OPEN)
    return sorted(alerts.values_list("device_id", flat=True))


def test_beat_entry_queues_a_run_per_shard_and_the_worker_runs_them(shards, celery_worker):
    silent = {alias: [silent_device(alias)] for alias in shards}

    analyse_all_shards.delay()

    for alias in shards:
        wait_until(lambda a=alias: open_offline_alerts(a) == silent[a], f"a run on {alias}")
    # Beat's next tick (called here to see what it queued): the old alerts stay single,
    # the devices silent since get theirs.
    for alias in shards:
        silent[alias].append(silent_device(alias))
    assert analyse_all_shards() == shards
    for alias in shards:
        wait_until(lambda a=alias: open_offline_alerts(a) == silent[a], f"a 2nd run on {alias}")
    wait_until(lambda: not busy(shards), "the runs to finish")
    assert {alias: open_offline_alerts(alias) for alias in shards} == silent


def busy(aliases: list[str]) -> bool:
    """True while some analysis run holds a shard's lock (seen from pg_locks)."""
    from shards.analysis.run import ANALYSIS_LOCK_NAMESPACE

    for alias in aliases:
        with connections[alias].cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                [ANALYSIS_LOCK_NAMESPACE],
            )
            if cursor.fetchone()[0]:
                return True
    return False


def test_a_second_run_of_a_busy_shard_skips_and_the_first_finishes(shards):
    device = make_device(shard="shard_1").device
    Device.objects.filter(pk=device.pk).update(raw_retention_days=1)
    old = timezone.now() - timedelta(days=2)
    Reading.objects.on_shard("shard_1").create(device_id=device.pk, metric="t", ts=old, value=1)
    # Someone holds the old reading: the first run's retention DELETE waits for it.
    release = threading.Event()
    held = threading.Event()
    first: dict[str, Any] = {}

    def hold_reading() -> None:
        try:
            with transaction.atomic(using="shard_1"):
                list(Reading.objects.on_shard("shard_1").select_for_update().filter(ts=old))
                held.set()
                release.wait(WAIT)
        finally:
            connections.close_all()

    def first_run() -> None:
        try:
            first.update(analyse_shard("shard_1"))
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold_reading)
    holder.start()
    assert held.wait(WAIT)
    runner = threading.Thread(target=first_run)
    runner.start()
    try:
        wait_until(lambda: deleting_waits("shard_1"), "the first run to wait on the reading")
        second = analyse_shard("shard_1")
        assert second["skipped"]
        assert "skipped" not in analyse_shard("shard_2")  # other shards are not held up
    finally:
        release.set()
        holder.join(WAIT)
        runner.join(WAIT)
    assert "skipped" not in first and "errors" not in first, first
    assert first["retention"]["readings"] == 1
    assert not Reading.objects.on_shard("shard_1").filter(device_id=device.pk).exists()


def deleting_waits(alias: str) -> bool:
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query LIKE '%%DELETE%%'"
        )
        return cursor.fetchone()[0] > 0
