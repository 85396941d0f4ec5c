"""Anomaly rules over the minute buckets the rollup step has just recomputed.

Each rule (core.AlertRule: device, metric, kind) is judged on every new or
changed minute bucket of its device and metric:

- min / max: the bucket's lowest / highest reading against the bound;
- zscore: the bucket's mean against the mean and sample standard deviation of the
  device's raw readings of that metric in the rule's trailing window (the
  window_minutes before the bucket starts). Raw readings, not minute rollups:
  exact however a minute was sampled, and a window of minutes is always inside
  raw retention. Fewer than ZSCORE_MIN_SAMPLES readings there: not judged.

A breach raises the rule's alert ("<kind>:<metric>", one unresolved at a time);
it is cleared when the newest judged bucket is back in range, unless that bucket
is older than the device's newest reading (a late reading for a past minute
says nothing about now).
"""

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import connections

from core.models import AlertRule
from shards.alerts import UNRESOLVED, clear_alert, raise_alert
from shards.analysis.aggregates import Moments, combine, safe_moments
from shards.analysis.buckets import MinuteBucket
from shards.models import Alert, LatestValue, Reading

logger = logging.getLogger(__name__)

ZSCORE_MIN_SAMPLES = 10
# A flat history: a value this close to its mean (relative, or absolute near zero) is no change.
SAME, SAME_NEAR_ZERO = Decimal("1e-9"), Decimal("1e-12")
Kind = AlertRule.Kind
SeriesKey = tuple[int, str]  # (device_id, metric)

# Mean, deviation and count of the raw readings before each bucket, for all in one
# query; huge readings apart, in numeric, so the squares cannot overflow.
WINDOW_STATS = f"""
    SELECT k.i, {safe_moments("r.value")}
    FROM unnest(%s::bigint[], %s::text[], %s::timestamptz[], %s::int[])
        WITH ORDINALITY AS k(device_id, metric, start, window_minutes, i)
    LEFT JOIN {Reading._meta.db_table} AS r
        ON r.device_id = k.device_id AND r.metric = k.metric
        AND r.ts >= k.start - make_interval(mins => k.window_minutes) AND r.ts < k.start
    GROUP BY k.i
"""


@dataclass(frozen=True)
class Verdict:
    """A rule's judgement of one bucket."""

    start: datetime
    breached: bool
    value: float
    message: str


def judge(rule: AlertRule, bucket: MinuteBucket, window: Moments | None) -> Verdict | None:
    """The rule's verdict on the bucket, or None if it cannot be judged (too little history)."""
    at = f"in the minute from {bucket.start:%Y-%m-%d %H:%M} UTC"
    if rule.kind == Kind.MIN:
        value = bucket.min
        message = f"{rule.metric} fell to {value:g} {at}, below the minimum {rule.threshold:g}"
        return Verdict(bucket.start, value < rule.threshold, value, message)
    if rule.kind == Kind.MAX:
        value = bucket.max
        message = f"{rule.metric} rose to {value:g} {at}, above the maximum {rule.threshold:g}"
        return Verdict(bucket.start, value > rule.threshold, value, message)
    if window is None or window.count < ZSCORE_MIN_SAMPLES or window.mean is None:
        return None
    z = z_score(bucket.mean, window.mean, window.stddev or 0)
    message = (
        f"{rule.metric} averaged {bucket.mean:g} {at}: {z:.3g} standard deviations from"
        f" the mean {float(window.mean):g} of the {rule.window_minutes} minutes before"
    )
    return Verdict(bucket.start, z > rule.threshold, bucket.mean, message)


def z_score(value: float, mean: Decimal | float, stddev: Decimal | float) -> float:
    """|value - mean| in standard deviations; a flat history makes any change infinite.

    In Decimal: the distance between readings of both signs near the float8
    maximum is past it, and so may the deviation be.
    """
    distance = abs(Decimal(value) - Decimal(mean))
    if stddev > 0:
        return float(distance / Decimal(stddev))
    scale = max(abs(Decimal(value)), abs(Decimal(mean)))
    return 0.0 if distance <= max(SAME * scale, SAME_NEAR_ZERO) else math.inf


def window_stats(
    alias: str, pairs: Iterable[tuple[AlertRule, MinuteBucket]]
) -> dict[tuple[int, str, datetime], Moments]:
    """Trailing-window statistics for each (zscore rule, bucket), in one query on the shard."""
    keys = [(b.device_id, b.metric, b.start, rule.window_minutes) for rule, b in pairs]
    if not keys:
        return {}
    columns = [list(column) for column in zip(*keys, strict=True)]
    with connections[alias].cursor() as cursor:
        cursor.execute(WINDOW_STATS, columns)
        rows = cursor.fetchall()
    return {keys[row[0] - 1][:3]: combine(row[1:4], row[4:7]) for row in rows}


def newest_minutes(alias: str, device_ids: list[int]) -> dict[SeriesKey, datetime]:
    """The minute of each series' newest reading (LatestValue), to tell late buckets."""
    latest = LatestValue.objects.on_shard(alias).filter(device_id__in=device_ids)
    return {
        (device_id, metric): ts.replace(second=0, microsecond=0)
        for device_id, metric, ts in latest.values_list("device_id", "metric", "ts")
    }


def unresolved_conditions(alias: str, device_ids: list[int]) -> set[tuple[int, str]]:
    """(device, condition) of every open or acknowledged alert, so runs skip needless writes."""
    alerts = Alert.objects.on_shard(alias).filter(device_id__in=device_ids, state__in=UNRESOLVED)
    return set(alerts.values_list("device_id", "condition"))


def evaluate_rules(alias: str, buckets: list[MinuteBucket]) -> dict[str, int]:
    """Judge the enabled rules of the buckets' devices; raise and clear their alerts.

    Rules come from the directory in one query; window statistics, newest
    readings and open alerts from the shard in one query each. Alert writes go
    through the device's fence (shards.alerts), so they follow a device that moved.
    A device whose rules fail (its alert writes, say) is logged with the reason and
    counted in `devices_failed`; the other devices are judged all the same.
    """
    counts = {"buckets": len(buckets), "rules": 0, "opened": 0, "cleared": 0, "devices_failed": 0}
    series: dict[SeriesKey, list[MinuteBucket]] = defaultdict(list)
    for bucket in sorted(buckets, key=lambda b: b.start):
        series[(bucket.device_id, bucket.metric)].append(bucket)
    device_ids = sorted({device_id for device_id, _ in series})
    if not device_ids:
        return counts
    rules_of: dict[int, list[AlertRule]] = defaultdict(list)
    for rule in AlertRule.objects.filter(device_id__in=device_ids, enabled=True):
        if (rule.device_id, rule.metric) in series:
            rules_of[rule.device_id].append(rule)
    if not rules_of:
        return counts
    stats = window_stats(
        alias,
        [
            (rule, bucket)
            for rules in rules_of.values()
            for rule in rules
            if rule.kind == Kind.ZSCORE
            for bucket in series[(rule.device_id, rule.metric)]
        ],
    )
    newest = newest_minutes(alias, device_ids)
    unresolved = unresolved_conditions(alias, device_ids)
    for device_id, rules in rules_of.items():
        try:
            for rule in rules:
                key = (rule.device_id, rule.metric)
                verdicts = [
                    verdict
                    for bucket in series[key]
                    if (verdict := judge(rule, bucket, stats.get((*key, bucket.start)))) is not None
                ]
                is_open = (rule.device_id, rule.condition) in unresolved
                for outcome, done in apply_verdicts(rule, verdicts, is_open, newest.get(key)):
                    counts[outcome] += done
        except Exception as exc:  # one device's failure must not stop the others
            counts["devices_failed"] += 1
            logger.error(
                "rules of device %s on %s failed, its minutes stay unjudged: %s",
                device_id,
                alias,
                (str(exc).strip().splitlines() or [type(exc).__name__])[0],
                exc_info=True,
            )
    return counts


def apply_verdicts(
    rule: AlertRule, verdicts: list[Verdict], is_open: bool, newest: datetime | None
) -> Iterator[tuple[str, int]]:
    """Raise the rule's alert on a breach, clear it when the newest minute is back in
    range; yields what it did as ("rules" | "opened" | "cleared", how many)."""
    if not verdicts:
        return
    yield "rules", 1
    breaches = [verdict for verdict in verdicts if verdict.breached]
    if breaches and not is_open:
        latest = breaches[-1]  # the most recent breach describes the condition best
        _, opened = raise_alert(
            rule.device_id,
            rule.condition,
            latest.message,
            severity=rule.severity,
            metric=rule.metric,
            value=latest.value,
        )
        yield "opened", int(opened)
        is_open = True
    last = verdicts[-1]
    if is_open and not last.breached and last.start >= (newest or last.start):
        yield "cleared", clear_alert(rule.device_id, rule.condition)
