"""Rollups on real shards: equal to a direct aggregate, incremental, fenced, and moved.

Readings arrive through the real import (a staged upload + import_upload_now), which
marks the minutes they touch; every check compares the stored rollups with an
aggregate computed by different SQL (epoch arithmetic, not date_bin) over the raw
readings, or over what the test knows it sent where retention deleted them.
"""

import json
import logging
import math
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connections, transaction
from django.test import Client
from django.utils import timezone

from core.models import AlertRule, Device, User
from shards.analysis.retention import delete_old_readings
from shards.analysis.rollups import BATCH_SIZE, roll_up_shard
from shards.analysis.run import analyse_shard
from shards.ingest import _import_on_shard, import_upload_now
from shards.models import Alert, DeviceFence, RawRetention, Reading, ReadingRollup, RollupPending
from shards.moves.protocol import move_device
from shards.series import device_series
from tests.factories import make_device
from tests.move_helpers import store_staged

# Ten past eleven at night: the readings cross an hour and a day boundary.
START = datetime(2026, 3, 9, 22, 50, 17, tzinfo=UTC)
WIDTHS = {"minute": 60, "hour": 3600, "day": 86400}

Row = tuple  # (metric, bucket, count, min, max, sum)


def minute_of(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def send(device_id: int, batch: str, readings: list[tuple[str, datetime, float]]) -> None:
    """One batch through the real import, as a device's upload is imported.

    Staged directly, with no task queued: the session's Celery worker (other tests start
    it) must not import it at the same time and hold the device's fence while a test
    runs retention or a rollup, which skip devices with a write in flight.
    """
    rows = [{"metric": metric, "ts": ts, "value": value} for metric, ts, value in readings]
    staged = store_staged(device_id, batch, rows)
    assert import_upload_now(device_id, staged.pk) == "imported"


def irregular(start: datetime, seconds: int, step: int, metric: str = "temp") -> list:
    """Readings every `step` seconds with values that make min, max and sum all differ."""
    return [
        (metric, start + timedelta(seconds=s), float((s * 7919) % 101) - 50.5)
        for s in range(0, seconds, step)
    ]


def direct(alias: str, device_id: int, granularity: str | int) -> list[Row]:
    """The aggregate by other SQL: buckets from epoch arithmetic over the raw readings.

    `granularity`: a rollup granularity's name, or a width in seconds.
    """
    width = WIDTHS.get(granularity, granularity)
    with connections[alias].cursor() as cursor:
        cursor.execute(
            """
            SELECT metric, to_timestamp(floor(extract(epoch FROM ts) / %s) * %s) AS bucket,
                   count(*), min(value), max(value), sum(value)
              FROM shards_reading WHERE device_id = %s
             GROUP BY 1, 2 ORDER BY 1, 2
            """,
            [width, width, device_id],
        )
        return [(m, b, n, lo, hi, pytest.approx(total)) for m, b, n, lo, hi, total in cursor]


def stored(alias: str, device_id: int, granularity: str) -> list[Row]:
    rows = (
        ReadingRollup.objects.on_shard(alias)
        .filter(device_id=device_id, granularity=granularity)
        .order_by("metric", "bucket")
        .values_list("metric", "bucket", "count", "min", "max", "sum")
    )
    return [(*row[:-1], float(row[-1])) for row in rows]  # sums to compare with float8 sums


def assert_rollups_equal_raw(alias: str, device_id: int) -> None:
    for granularity in WIDTHS:
        assert stored(alias, device_id, granularity) == direct(alias, device_id, granularity)


def pending(alias: str, device_id: int) -> int:
    return RollupPending.objects.on_shard(alias).filter(device_id=device_id).count()


def test_rollups_equal_a_direct_aggregate_after_backfill_and_rerun(shards):
    device = make_device(shard="shard_1").device.pk
    send(device, "a", irregular(START, 3 * 3600, 7))  # 3 h: two days, four hours
    send(device, "b", irregular(START, 3600, 13, metric="rpm"))

    first = roll_up_shard("shard_1")

    assert first.readings == Reading.objects.for_device(device).count()
    assert pending("shard_1", device) == 0
    assert_rollups_equal_raw("shard_1", device)
    assert [(d[0], d[1].day) for d in stored("shard_1", device, "day")] == [
        ("rpm", 9),
        ("temp", 9),
        ("temp", 10),
    ]

    # A re-run has nothing to do; a re-sent batch marks minutes but changes none.
    assert roll_up_shard("shard_1").claimed == 0
    send(device, "a-again", irregular(START, 600, 7))
    rerun = roll_up_shard("shard_1")
    assert rerun.claimed > 0 and rerun.changed == []
    assert_rollups_equal_raw("shard_1", device)

    # Late readings update exactly the minutes they fall in, and those minutes' hours
    # and days: one minute late in the first hour, two in a day before any other.
    moments = [START + timedelta(minutes=3, seconds=0.5), START - timedelta(days=2)]
    late = [("temp", at + timedelta(seconds=i), 1000.0 + i) for at in moments for i in (0, 1)]
    late.append(("temp", START - timedelta(days=2, minutes=-5), -1000.0))
    send(device, "late", late)
    backfill = roll_up_shard("shard_1")

    assert {(b.metric, b.start) for b in backfill.changed} == {
        ("temp", minute_of(ts)) for _, ts, _ in late
    }
    assert backfill.hours == 2 and backfill.days == 2
    assert_rollups_equal_raw("shard_1", device)
    assert roll_up_shard("shard_1").changed == []


def test_series_over_rollups_equal_the_series_over_raw_readings(shards):
    device = make_device(shard="shard_2").device.pk
    send(device, "a", irregular(START, 6 * 3600, 11))
    start, end = START + timedelta(minutes=17, seconds=3), START + timedelta(hours=5, seconds=41)

    before = device_series(device, start, end)  # nothing rolled up: all raw
    roll_up_shard("shard_2")
    after = device_series(device, start, end)
    # ... and with a pending minute in the middle: rollups before it, raw from there on.
    late = START + timedelta(hours=2, seconds=1)
    send(device, "late", [("temp", late, 0.25)])
    mixed = device_series(device, start, end)

    def flat(series):
        return [
            (m, b.start, b.min, b.max, pytest.approx(b.mean), b.count)
            for m, buckets in sorted(series.metrics.items())
            for b in buckets
        ]

    assert before.width == timedelta(minutes=1)
    assert flat(after) == flat(before)
    assert after.latest_ts == before.latest_ts
    others_after = [b for b in mixed.metrics["temp"] if b.start != minute_of(late)]
    others_before = [b for b in before.metrics["temp"] if b.start != minute_of(late)]
    assert others_after == others_before
    counts = [
        [b.count for b in s.metrics["temp"] if b.start == minute_of(late)] for s in (before, mixed)
    ]
    assert counts[1] == [counts[0][0] + 1]


def test_a_late_reading_before_raw_retention_is_added_to_its_rolled_up_minute(shards):
    device = make_device(shard="shard_1").device
    Device.objects.filter(pk=device.pk).update(raw_retention_days=1)
    old = (timezone.now() - timedelta(days=3)).replace(second=0, microsecond=0)
    readings = [("temp", old + timedelta(seconds=s), float(s)) for s in (0, 10, 20)]
    send(device.pk, "old", readings)

    # Retention waits for the rollups: nothing goes while the minute is pending.
    assert delete_old_readings("shard_1") == 0
    roll_up_shard("shard_1")
    assert delete_old_readings("shard_1") == 3
    raw_since = RawRetention.objects.on_shard("shard_1").get(device_id=device.pk).raw_since
    assert raw_since > old and raw_since.time() == datetime.min.time()
    assert stored("shard_1", device.pk, "minute") == [("temp", old, 3, 0.0, 20.0, 30.0)]

    # A reading for that minute arrives late: added to the minute, not recomputed.
    send(device.pk, "late", [("temp", old + timedelta(seconds=30), 100.0)])
    result = roll_up_shard("shard_1")

    assert [(b.start, b.count, b.max) for b in result.changed] == [(old, 4, 100.0)]
    assert stored("shard_1", device.pk, "minute") == [("temp", old, 4, 0.0, 100.0, 130.0)]
    hour = old.replace(minute=0)
    assert stored("shard_1", device.pk, "hour") == [("temp", hour, 4, 0.0, 100.0, 130.0)]
    assert Reading.objects.for_device(device).count() == 0  # taken in, so not counted twice
    assert roll_up_shard("shard_1").changed == []
    series = device_series(device, old - timedelta(hours=3), old + timedelta(hours=3))
    assert [(b.count, b.max) for b in series.metrics["temp"]] == [(4, 100.0)]


@pytest.mark.parametrize("state", [DeviceFence.State.FENCED, DeviceFence.State.COPYING])
def test_a_device_a_move_holds_keeps_its_marks_for_a_later_run(shards, state):
    held = make_device(shard="shard_1").device.pk
    free = make_device(shard="shard_1").device.pk
    for device in (held, free):
        send(device, "a", irregular(minute_of(START), 300, 10))  # five minutes
    fences = DeviceFence.objects.on_shard("shard_1").filter(device_id=held)
    fences.update(state=state)
    orphan = RollupPending.objects.on_shard("shard_1").create(
        device_id=free + 1000, metric="t", minute=START, marked_at=START
    )  # of a device with no rows here at all: never claimable, so dropped

    result = roll_up_shard("shard_1")

    assert result.devices_skipped == {held}
    assert pending("shard_1", orphan.device_id) == 0
    assert {b.device_id for b in result.changed} == {free}
    assert pending("shard_1", held) == 5 and stored("shard_1", held, "minute") == []
    fences.update(state=DeviceFence.State.ACTIVE)
    assert {b.device_id for b in roll_up_shard("shard_1").changed} == {held}
    assert_rollups_equal_raw("shard_1", held)


def test_a_device_moved_between_runs_is_rolled_up_once_on_its_new_shard(shards):
    device = make_device(shard="shard_1").device.pk
    send(device, "before", irregular(START, 600, 5))
    roll_up_shard("shard_1")
    second = irregular(START + timedelta(minutes=10), 600, 5)
    send(device, "pending", second)

    move_device(device, "shard_2")

    assert roll_up_shard("shard_1").changed == []  # the old copy is not its to do
    moved = roll_up_shard("shard_2")
    assert {(b.device_id, b.start) for b in moved.changed} == {
        (device, minute_of(ts)) for _, ts, _ in second
    }
    assert_rollups_equal_raw("shard_2", device)
    assert roll_up_shard("shard_2").changed == []


def test_an_import_still_open_keeps_its_mark_until_it_commits(shards):
    """The race the import's DO UPDATE closes: a rollup between its insert and its commit."""
    device = make_device(shard="shard_1").device.pk
    send(device, "first", [("temp", START, 1.0)])
    # Written directly, with no import task queued: a worker must not import it first.
    staged_late = store_staged(
        device, "third", [{"metric": "temp", "ts": START + timedelta(seconds=5), "value": 5.0}]
    )
    imported, release = threading.Event(), threading.Event()

    def import_and_wait() -> None:
        try:
            with transaction.atomic(using="shard_1"):
                _import_on_shard("shard_1", device, staged_late.pk)
                imported.set()
                release.wait(10)
        finally:
            connections.close_all()

    importer = threading.Thread(target=import_and_wait)
    importer.start()
    try:
        assert imported.wait(10)
        during = roll_up_shard("shard_1")
    finally:
        release.set()
        importer.join()

    # The minute's mark was held by the open import: left alone, not rolled up early.
    assert during.changed == [] and pending("shard_1", device) == 1
    after = roll_up_shard("shard_1")
    assert [(b.count, b.min, b.max) for b in after.changed] == [(2, 1.0, 5.0)]
    assert_rollups_equal_raw("shard_1", device)


def test_the_api_reads_a_month_from_rollups_after_retention_took_the_raw_readings(shards):
    owner, other = (User.objects.create_user(name, password="pw") for name in ("o", "p"))
    device = make_device(shard="shard_2", users=[owner]).device
    Device.objects.filter(pk=device.pk).update(raw_retention_days=2)
    end = timezone.now().replace(microsecond=0)
    start = end - timedelta(days=30)
    readings = irregular(start, 30 * 86400, 600)  # every 10 minutes for 30 days
    send(device.pk, "month", readings)
    expected = direct("shard_2", device.pk, 7200)
    roll_up_shard("shard_2")
    assert delete_old_readings("shard_2") > 3800  # all but the last two to three days
    client = Client()
    client.force_login(owner)
    url = f"/api/v1/devices/{device.pk}/series"

    answer = client.get(url, {"start": start.isoformat(), "end": end.isoformat()})

    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["bucket_seconds"] == 7200
    ours = [
        ("temp", datetime.fromisoformat(b["start"]), b["count"], b["min"], b["max"])
        for b in body["metrics"]["temp"]
    ]
    assert ours == [row[:5] for row in expected] and len(ours) >= 360
    assert sum(b["count"] for b in body["metrics"]["temp"]) == len(readings)
    # Another user's device is not found; a bad range says what is wrong.
    client.force_login(other)
    assert client.get(url).status_code == 404
    client.force_login(owner)
    backwards = client.get(url, {"start": end.isoformat(), "end": start.isoformat()})
    too_long = client.get(url, {"start": "2020-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"})
    assert (backwards.status_code, too_long.status_code) == (400, 400)
    assert "start must be before end" in backwards.json()["detail"] + str(
        backwards.json().get("errors")
    )
    assert "at most 366 days" in too_long.json()["detail"]


# --- values at the edge of float8 ---------------------------------------------------------

HUGE = 1.7e308  # legal: any finite float is
DBL_MAX = sys.float_info.max


def exact_sums(alias: str, device_id: int, granularity: str) -> list[Decimal]:
    """The stored sums beside the same sums in numeric by other SQL (epoch arithmetic)."""
    width = WIDTHS[granularity]
    with connections[alias].cursor() as cursor:
        cursor.execute(
            """
            SELECT sum(value::numeric) FROM shards_reading WHERE device_id = %s
             GROUP BY to_timestamp(floor(extract(epoch FROM ts) / %s) * %s) ORDER BY 1
            """,
            [device_id, width, width],
        )
        return sorted(row[0] for row in cursor)


def stored_sums(alias: str, device_id: int, granularity: str) -> list[Decimal]:
    rollups = ReadingRollup.objects.on_shard(alias).filter(
        device_id=device_id, granularity=granularity
    )
    return sorted(Decimal(total) for total in rollups.values_list("sum", flat=True))


def test_huge_values_of_both_signs_roll_up_and_chart_without_overflow(shards):
    """Two legal 1.7e308 in one minute used to overflow the float8 sum: every rollup of
    the shard failed from then on, and the device's series answered 500."""
    owner = User.objects.create_user("o", password="pw")
    device = make_device(shard="shard_1", users=[owner]).device
    calm = make_device(shard="shard_1").device.pk
    minute = minute_of(START)
    values = [(1, HUGE), (2, HUGE), (61, HUGE), (62, -HUGE), (63, HUGE), (121, DBL_MAX)]
    values += [(122, DBL_MAX), (181, -DBL_MAX), (182, 2.5), (183, -DBL_MAX)]
    send(device.pk, "huge", [("temp", minute + timedelta(seconds=s), v) for s, v in values])
    send(calm, "calm", irregular(START, 600, 7))
    start, end = minute - timedelta(hours=3), minute + timedelta(hours=3)  # 1-minute buckets

    raw = device_series(device, start, end)
    result = roll_up_shard("shard_1")

    assert not result.devices_failed
    assert_rollups_equal_raw("shard_1", calm)
    means = {b.start: b.mean for b in result.changed if b.device_id == device.pk}
    expected = {
        minute: HUGE,
        minute + timedelta(minutes=1): pytest.approx(HUGE / 3, rel=1e-12),
        minute + timedelta(minutes=2): DBL_MAX,  # never past the largest float
        minute + timedelta(minutes=3): pytest.approx(-DBL_MAX / 3 * 2, rel=1e-12),
    }
    assert means == expected
    for granularity in WIDTHS:
        assert stored_sums("shard_1", device.pk, granularity) == exact_sums(
            "shard_1", device.pk, granularity
        )
    assert stored("shard_1", device.pk, "hour")[0][2:5] == (10, -DBL_MAX, DBL_MAX)
    hour_mean = ReadingRollup.objects.on_shard("shard_1").get(
        device_id=device.pk, granularity="hour"
    )
    assert math.isfinite(hour_mean.mean) and -DBL_MAX <= hour_mean.mean <= DBL_MAX

    # The series gives the same finite buckets from raw readings and from rollups.
    rolled = device_series(device, start, end)
    for series in (raw, rolled):
        buckets = series.metrics["temp"]
        assert series.width == timedelta(minutes=1)
        assert {b.start: b.mean for b in buckets} == expected
        assert [b.count for b in buckets] == [2, 3, 2, 3]

    # The API carries them as plain JSON numbers.
    client = Client()
    client.force_login(owner)
    answer = client.get(
        f"/api/v1/devices/{device.pk}/series", {"start": start.isoformat(), "end": end.isoformat()}
    )
    assert answer.status_code == 200, answer.content
    body = json.loads(answer.content, parse_constant=lambda name: pytest.fail(name))
    assert [b["max"] for b in body["metrics"]["temp"]] == [HUGE, HUGE, DBL_MAX, 2.5]
    assert body["metrics"]["temp"][2]["mean"] == DBL_MAX


# --- one device's failure is its own ------------------------------------------------------

POISON = """
    CREATE FUNCTION test_poison_rollups() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.device_id = {device} THEN
            RAISE EXCEPTION 'poisoned rollup row of device %', NEW.device_id;
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER test_poison_rollups BEFORE INSERT OR UPDATE ON shards_readingrollup
        FOR EACH ROW EXECUTE FUNCTION test_poison_rollups();
"""
CURE = "DROP FUNCTION IF EXISTS test_poison_rollups() CASCADE"


@pytest.fixture
def poisoned(shards) -> Iterator[int]:
    """A device on shard_1 whose every rollup write fails in the database: a stand-in
    for any database error in that device's part of the run."""
    device = make_device(shard="shard_1").device.pk
    with connections["shard_1"].cursor() as cursor:
        cursor.execute(POISON.format(device=device))
    try:
        yield device
    finally:
        with connections["shard_1"].cursor() as cursor:
            cursor.execute(CURE)


def cure() -> None:
    with connections["shard_1"].cursor() as cursor:
        cursor.execute(CURE)


@pytest.mark.parametrize("batch_size", [BATCH_SIZE, 4])
def test_a_device_whose_rollups_fail_keeps_its_marks_and_holds_up_no_other(
    poisoned, batch_size, caplog
):
    healthy = [make_device(shard="shard_1").device.pk for _ in range(6)]
    devices = sorted([poisoned, *healthy])
    for device in devices:
        send(device, "a", irregular(minute_of(START), 300, 10))  # five minutes each
    caplog.set_level(logging.INFO, logger="shards.analysis.rollups")

    for attempt in (1, 2):  # it fails again on the next run, and says so again
        caplog.clear()
        result = roll_up_shard("shard_1", batch_size=batch_size)

        assert list(result.devices_failed) == [poisoned]
        assert "poisoned rollup row" in result.devices_failed[poisoned]
        assert {b.device_id for b in result.changed} == (set(healthy) if attempt == 1 else set())
        for device in healthy:
            assert pending("shard_1", device) == 0
            assert_rollups_equal_raw("shard_1", device)
        assert pending("shard_1", poisoned) == 5  # kept for a later run
        assert stored("shard_1", poisoned, "minute") == []
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1
        said = errors[0].getMessage()
        assert f"device {poisoned}" in said and "poisoned rollup row" in said
        assert "5 marks kept" in said and "pending since" in said

    cure()
    healed = roll_up_shard("shard_1", batch_size=batch_size)
    assert not healed.devices_failed
    assert {b.device_id for b in healed.changed} == {poisoned}
    assert pending("shard_1", poisoned) == 0
    assert_rollups_equal_raw("shard_1", poisoned)


def test_the_run_judges_the_other_devices_and_reports_the_failing_one(poisoned):
    other = make_device(shard="shard_1").device.pk
    for device in (poisoned, other):
        AlertRule.objects.create(device_id=device, metric="temp", kind="max", threshold=0)
        send(device, "a", irregular(minute_of(START), 120, 10))

    summary = analyse_shard("shard_1")

    assert summary["rollups"]["devices_failed"] == 1
    assert summary["rules"]["opened"] == 1
    opened = Alert.objects.on_shard("shard_1").values_list("device_id", "condition")
    assert list(opened) == [(other, "max:temp")]
    assert f"device {poisoned}" in summary["errors"]["rollups"]
    assert "poisoned rollup row" in summary["errors"]["rollups"]
    cure()
    again = analyse_shard("shard_1")
    assert "errors" not in again, again
    assert again["rules"]["opened"] == 1 and pending("shard_1", poisoned) == 0
