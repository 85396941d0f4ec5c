"""Anomaly rules on a real shard: the buckets are handed in as the rollup step hands them."""

import math
from datetime import timedelta

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
    assert quiet == {"buckets": 2, "rules": 2, "opened": 0, "cleared": 0}
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
    assert steady == {"buckets": 1, "rules": 1, "opened": 0, "cleared": 0}
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
