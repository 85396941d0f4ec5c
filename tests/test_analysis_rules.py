"""Anomaly rules on a real shard: the buckets are handed in as the rollup step hands them."""

import logging
import math
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from core.models import AlertRule
from shards.analysis.buckets import MinuteBucket
from shards.analysis.rules import evaluate_rules, z_score
from shards.analysis.run import analyse_shard
from shards.ingest import import_upload_now, stage_upload
from shards.models import Alert, LatestValue, Reading
from tests.factories import T0, make_device

Kind = AlertRule.Kind
State = Alert.State


def bucket(device_id: int, minute: int, *values: float, metric: str = "temp") -> MinuteBucket:
    start = T0 + timedelta(minutes=minute)
    return MinuteBucket(
        device_id, metric, start, len(values), min(values), max(values), sum(values)
    )


def alerts(alias: str, device_id: int) -> list[tuple[str, str]]:
    rows = Alert.objects.on_shard(alias).filter(device_id=device_id).order_by("opened_at", "id")
    return list(rows.values_list("condition", "state"))


def rule(device_id: int, kind: str, threshold: float, **fields) -> AlertRule:
    fields.setdefault("metric", "temp")
    return AlertRule.objects.create(device_id=device_id, kind=kind, threshold=threshold, **fields)


def test_thresholds_open_once_and_clear_when_back_in_range(shards):
    device = make_device(shard="shard_1").device.pk
    rule(device, Kind.MIN, 10, severity=AlertRule.Severity.CRITICAL)
    rule(device, Kind.MAX, 30)
    rule(device, Kind.MAX, 0, metric="humidity", enabled=False)

    humid = bucket(device, 0, 50, metric="humidity")  # its rule is disabled
    quiet = evaluate_rules("shard_1", [bucket(device, 0, 20, 25), humid])
    assert quiet == {"buckets": 2, "rules": 2, "opened": 0, "cleared": 0, "devices_failed": 0}
    assert alerts("shard_1", device) == []

    assert evaluate_rules("shard_1", [bucket(device, 1, 20, 35)])["opened"] == 1
    assert evaluate_rules("shard_1", [bucket(device, 2, 40)])["opened"] == 0  # no flood
    assert alerts("shard_1", device) == [("max:temp", State.OPEN)]
    hot = Alert.objects.on_shard("shard_1").get(device_id=device)
    assert (hot.metric, hot.value, hot.severity) == ("temp", 35.0, Alert.Severity.WARNING)
    assert "above the maximum 30" in hot.message

    # Too cold and no longer too hot in one minute: one opens, the other clears.
    swing = evaluate_rules("shard_1", [bucket(device, 3, 5, 20)])
    assert (swing["opened"], swing["cleared"]) == (1, 1)
    assert alerts("shard_1", device) == [("max:temp", State.CLEARED), ("min:temp", State.OPEN)]
    cold = Alert.objects.on_shard("shard_1").get(condition="min:temp")
    assert (cold.value, cold.severity) == (5.0, Alert.Severity.CRITICAL)

    assert evaluate_rules("shard_1", [bucket(device, 4, 15)])["cleared"] == 1
    assert alerts("shard_1", device) == [("max:temp", State.CLEARED), ("min:temp", State.CLEARED)]


def test_only_the_newest_bucket_clears_and_a_late_one_does_not(shards):
    device = make_device(shard="shard_2").device.pk
    rule(device, Kind.MAX, 30)
    # A breach and a recovery in one run: the breach is history, already cleared.
    evaluate_rules("shard_2", [bucket(device, 2, 20), bucket(device, 1, 40)])
    assert alerts("shard_2", device) == [("max:temp", State.CLEARED)]

    LatestValue.objects.on_shard("shard_2").create(
        device_id=device, metric="temp", ts=T0 + timedelta(minutes=10, seconds=30), value=50
    )
    evaluate_rules("shard_2", [bucket(device, 10, 50)])
    # A late reading for minute 5 is in range, but says nothing about minute 10.
    assert evaluate_rules("shard_2", [bucket(device, 5, 20)])["cleared"] == 0
    assert alerts("shard_2", device)[-1] == ("max:temp", State.OPEN)
    assert evaluate_rules("shard_2", [bucket(device, 10, 20)])["cleared"] == 1


def steady_history(device: int, minutes: int, per_minute: int = 6) -> None:
    """Readings every 10 s around 20 with a small wobble, from T0 on."""
    Reading.objects.on_shard("shard_1").bulk_create(
        Reading(
            device_id=device,
            metric="temp",
            ts=T0 + timedelta(seconds=10 * i),
            value=20 + 0.5 * math.sin(i),
        )
        for i in range(minutes * per_minute)
    )


def test_zscore_alerts_on_an_outlier_after_a_steady_window_not_on_steady_data(shards):
    device = make_device(shard="shard_1").device.pk
    rule(device, Kind.ZSCORE, 3, window_minutes=30)
    steady_history(device, 60)

    steady = evaluate_rules("shard_1", [bucket(device, 60, 20.3, 19.8, 20.1, 19.6)])
    assert steady == {"buckets": 1, "rules": 1, "opened": 0, "cleared": 0, "devices_failed": 0}
    assert alerts("shard_1", device) == []

    outlier = bucket(device, 61, 26, 27, 26.5)
    assert evaluate_rules("shard_1", [outlier])["opened"] == 1
    (alert,) = Alert.objects.on_shard("shard_1").filter(device_id=device)
    assert (alert.condition, alert.value) == ("zscore:temp", outlier.mean)
    assert "standard deviations from the mean" in alert.message

    assert evaluate_rules("shard_1", [bucket(device, 62, 20.2, 19.9)])["cleared"] == 1
    assert alerts("shard_1", device) == [("zscore:temp", State.CLEARED)]


def test_zscore_needs_history_before_it_judges(shards):
    device = make_device(shard="shard_1").device.pk
    rule(device, Kind.ZSCORE, 3, window_minutes=5)
    steady_history(device, 1)  # 6 readings in the window: fewer than required

    assert evaluate_rules("shard_1", [bucket(device, 2, 99)])["rules"] == 0
    assert alerts("shard_1", device) == []


def test_z_score_of_a_flat_history():
    assert z_score(5.0, 5.0, 0.0) == 0.0
    assert z_score(5.1, 5.0, 0.0) == math.inf
    assert z_score(7.0, 5.0, 0.5) == 4.0


def test_rules_follow_a_device_whose_rows_are_read_on_another_shard(shards):
    """Alerts are written through the fence: on the shard that owns the device."""
    device = make_device(shard="shard_2").device.pk
    rule(device, Kind.MAX, 30)
    evaluate_rules("shard_1", [bucket(device, 0, 45)])
    assert alerts("shard_2", device) == [("max:temp", State.OPEN)]
    assert alerts("shard_1", device) == []


def test_a_run_judges_the_minutes_its_rollup_step_recomputed(shards):
    """End to end through the real import and the rollup step."""
    device = make_device(shard="shard_2").device.pk
    rule(device, Kind.MAX, 30)
    minute = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=3)

    def report(batch: str, at: timedelta, value: float) -> None:
        readings = [{"ts": minute + at, "metric": "temp", "value": value}]
        staged = stage_upload(device, batch, readings)
        import_upload_now(device, staged.upload.pk)

    report("hot", timedelta(seconds=5), 45.0)
    first = analyse_shard("shard_2")
    assert "errors" not in first, first
    assert first["rules"]["opened"] == 1
    assert analyse_shard("shard_2")["rules"]["opened"] == 0  # nothing new to judge
    report("cool", timedelta(minutes=1, seconds=5), 20.0)
    assert analyse_shard("shard_2")["rules"]["cleared"] == 1
    assert alerts("shard_2", device) == [("max:temp", State.CLEARED)]


def test_zscore_over_huge_values_of_both_signs(shards):
    """Squares of 1e200 overflowed float8 in the window's variance: the step failed."""
    device = make_device(shard="shard_1").device.pk
    rule(device, Kind.ZSCORE, 3, window_minutes=30)
    Reading.objects.on_shard("shard_1").bulk_create(
        Reading(device_id=device, metric="temp", ts=T0 + timedelta(minutes=i), value=v)
        for i, v in enumerate([1e200, -1e200] * 6)  # mean 0, sample deviation ~1.04e200
    )

    quiet = evaluate_rules("shard_1", [bucket(device, 12, 1e200, -1e200, 1.5e200)])
    assert (quiet["rules"], quiet["opened"]) == (1, 0)  # mean 5e199: z ~0.48
    assert evaluate_rules("shard_1", [bucket(device, 13, 1.7e308, 1.7e308)])["opened"] == 1
    (alert,) = Alert.objects.on_shard("shard_1").filter(device_id=device)
    assert alert.value == 1.7e308
    assert "averaged 1.7e+308" in alert.message and "the mean 0 of" in alert.message
    assert "1.63e+108 standard deviations" in alert.message  # readable, not 109 digits


def test_z_score_of_values_whose_difference_overflows():
    assert z_score(1.7e308, -1.7e308, 1.7e308) == pytest.approx(2.0)
    assert z_score(-1.7e308, 1.7e308, 0.0) == math.inf


POISON_ALERTS = """
    CREATE FUNCTION test_poison_alerts() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.device_id = {device} THEN
            RAISE EXCEPTION 'poisoned alert of device %', NEW.device_id;
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER test_poison_alerts BEFORE INSERT ON shards_alert
        FOR EACH ROW EXECUTE FUNCTION test_poison_alerts();
"""


@pytest.fixture
def alert_poisoned(shards) -> Iterator[int]:
    """A device on shard_1 whose alerts cannot be written: any database error in its part."""
    device = make_device(shard="shard_1").device.pk
    with connections["shard_1"].cursor() as cursor:
        cursor.execute(POISON_ALERTS.format(device=device))
    try:
        yield device
    finally:
        with connections["shard_1"].cursor() as cursor:
            cursor.execute("DROP FUNCTION IF EXISTS test_poison_alerts() CASCADE")


def test_a_device_whose_rules_fail_stops_no_other_device(alert_poisoned, caplog):
    other = make_device(shard="shard_1").device.pk
    for device in (alert_poisoned, other):  # the failing device's rule comes first
        rule(device, Kind.MAX, 30)

    counts = evaluate_rules("shard_1", [bucket(alert_poisoned, 0, 40), bucket(other, 0, 45)])

    assert counts["opened"] == 1 and counts["devices_failed"] == 1
    assert alerts("shard_1", other) == [("max:temp", State.OPEN)]
    assert alerts("shard_1", alert_poisoned) == []
    (said,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert f"device {alert_poisoned}" in said and "poisoned alert" in said
