"""Rollup throughput on one shard: the rollup step measured against the bare aggregate.

Run: .venv/bin/python bench/rollup_bench.py --readings 200000   (or `make bench`)

In one run, on one shard of the running local cluster (not the test databases),
each round gives a throw-away device N readings (COPY, with the pending marks the
import would have written) and measures (a) the bare aggregate: one read-only
GROUP BY per minute over those readings, the least work any rollup must do, and
(b) roll_up_shard for that device: claim the marks, write minute, hour and day
rollups, delete the marks. Then (c) a backfill of late readings spread over the
whole span, rolled up incrementally. The rollups are checked against (a) before
the device and all its rows are deleted. The bench holds the shard's analysis
lock meanwhile, so the cluster's own analysis runs skip the shard.
"""

import argparse
import io
import os
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")

import django  # noqa: E402
from host_facts import describe  # noqa: E402  (bench/, the script's own directory)

django.setup()

from django.db import connections, transaction  # noqa: E402

from core.devices import create_device  # noqa: E402
from routers.registry import refresh_registry  # noqa: E402
from shards.analysis.buckets import BUCKET_ORIGIN  # noqa: E402
from shards.analysis.rollups import roll_up_shard  # noqa: E402
from shards.analysis.run import shard_run_lock  # noqa: E402
from shards.deletion import delete_devices_now  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LOCK_WAIT_SECONDS = 120

# The marks the import writes for a batch: the minutes its readings fall in.
MARK_MINUTES = """
    INSERT INTO shards_rolluppending (device_id, metric, minute, marked_at)
    SELECT DISTINCT %(device)s::bigint, metric, date_bin('1 minute', ts, %(origin)s), now()
    FROM unnest(%(metrics)s::text[], %(times)s::timestamptz[]) AS r(metric, ts)
    ON CONFLICT DO NOTHING
"""
AGGREGATE = """
    SELECT metric, date_bin('1 minute', ts, %(origin)s), count(*), min(value), max(value),
           sum(value)
    FROM shards_reading WHERE device_id = %(device)s GROUP BY 1, 2 ORDER BY 1, 2
"""
STORED_MINUTES = """
    SELECT metric, bucket, count, min, max, sum FROM shards_readingrollup
    WHERE device_id = %(device)s AND granularity = 'minute' ORDER BY 1, 2
"""


@dataclass(frozen=True)
class Round:
    readings: int
    aggregate_s: float
    rollup_s: float
    minutes: int
    hours: int
    days: int
    late: int
    late_s: float
    late_minutes: int

    @property
    def ratio(self) -> float:
        return self.aggregate_s / self.rollup_s


def copy_readings(alias: str, device_id: int, rows: list[tuple[str, datetime, float]]) -> None:
    buffer = io.StringIO(
        "".join(f"{device_id}\t{m}\t{ts.isoformat()}\t{v!r}\n" for m, ts, v in rows)
    )
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        cursor.cursor.copy_expert(
            "COPY shards_reading (device_id, metric, ts, value) FROM STDIN", buffer
        )


def mark(alias: str, device_id: int, rows: list[tuple[str, datetime, float]]) -> None:
    params = {
        "origin": BUCKET_ORIGIN,
        "device": device_id,
        "metrics": [metric for metric, _, _ in rows],
        "times": [ts for _, ts, _ in rows],
    }
    with connections[alias].cursor() as cursor:
        cursor.execute(MARK_MINUTES, params)


def settle(alias: str) -> None:
    with connections[alias].cursor() as cursor:
        for table in ("shards_reading", "shards_rolluppending", "shards_readingrollup"):
            cursor.execute(f"VACUUM ANALYZE {table}")
        cursor.execute("CHECKPOINT")


def readings_for(count: int, metrics: int) -> list[tuple[str, datetime, float]]:
    """One reading per metric per second, values that make min, max and sum all move."""
    names = [f"metric_{m:02d}" for m in range(metrics)]
    return [
        (names[i % metrics], T0 + timedelta(seconds=i // metrics), float((i * 7919) % 1009))
        for i in range(count)
    ]


def late_readings(count: int, metrics: int, span_s: int) -> list[tuple[str, datetime, float]]:
    """Readings half a second off the grid, spread evenly over the whole span."""
    step = max(1, span_s // count)
    return [
        (f"metric_{i % metrics:02d}", T0 + timedelta(seconds=i * step + 0.5), -1.0)
        for i in range(count)
    ]


def one_round(alias: str, count: int, metrics: int, late_count: int) -> Round:
    device_id = create_device(f"bench-rollup-{uuid.uuid4().hex[:8]}", shard=alias).device.pk
    try:
        rows = readings_for(count, metrics)
        copy_readings(alias, device_id, rows)
        mark(alias, device_id, rows)
        settle(alias)
        params = {"origin": BUCKET_ORIGIN, "device": device_id}
        with connections[alias].cursor() as cursor:
            started = time.perf_counter()
            cursor.execute(AGGREGATE, params)
            expected = cursor.fetchall()
            aggregate_s = time.perf_counter() - started

        started = time.perf_counter()
        full = roll_up_shard(alias, device_ids=[device_id])
        rollup_s = time.perf_counter() - started
        with connections[alias].cursor() as cursor:
            cursor.execute(STORED_MINUTES, params)
            assert cursor.fetchall() == expected, "rollups differ from the aggregate"

        span_s = count // metrics
        late = late_readings(late_count, metrics, span_s)
        copy_readings(alias, device_id, late)
        mark(alias, device_id, late)
        started = time.perf_counter()
        backfill = roll_up_shard(alias, device_ids=[device_id])
        late_s = time.perf_counter() - started
        with connections[alias].cursor() as cursor:
            cursor.execute(AGGREGATE, params)
            expected = cursor.fetchall()
            cursor.execute(STORED_MINUTES, params)
            assert cursor.fetchall() == expected, "rollups differ after the backfill"
        return Round(
            readings=full.readings,
            aggregate_s=aggregate_s,
            rollup_s=rollup_s,
            minutes=len(full.changed),
            hours=full.hours,
            days=full.days,
            late=len(late),
            late_s=late_s,
            late_minutes=len(backfill.changed),
        )
    finally:
        delete_devices_now([device_id])


def machine(alias: str) -> str:
    with connections[alias].cursor() as cursor:
        cursor.execute("SHOW server_version")
        return describe(cursor.fetchone()[0].split()[0])


def table(rounds: list[Round]) -> str:
    middle = sorted(rounds, key=lambda r: r.rollup_s)[len(rounds) // 2]
    spread = ", ".join(f"{r.readings / r.rollup_s:,.0f}" for r in rounds)
    return "\n".join(
        [
            "| measurement | readings | seconds | readings/s | note |",
            "|---|---:|---:|---:|---|",
            f"| bare GROUP BY per minute (read only) | {middle.readings:,} |"
            f" {middle.aggregate_s:.2f} | {middle.readings / middle.aggregate_s:,.0f} | baseline |",
            f"| roll_up_shard: minutes, hours, days written | {middle.readings:,} |"
            f" {middle.rollup_s:.2f} | {middle.readings / middle.rollup_s:,.0f} |"
            f" {middle.ratio:.0%} of the baseline; {middle.minutes:,} minutes,"
            f" {middle.hours:,} hours, {middle.days} days; all rounds: {spread} |",
            f"| backfill: late readings over the whole span | {middle.late:,} |"
            f" {middle.late_s:.2f} | {middle.late / middle.late_s:,.0f} |"
            f" {middle.late_minutes:,} minutes (and their hours and days) recomputed |",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=200_000, help="Readings per round.")
    parser.add_argument("--metrics", type=int, default=10, help="Distinct metrics.")
    parser.add_argument("--late", type=int, default=2_000, help="Late readings per round.")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds; the median is shown.")
    parser.add_argument("--shard", default="shard_1", help="Shard alias of the local cluster.")
    args = parser.parse_args()
    if args.shard not in refresh_registry(force=True):
        print(f"{args.shard} is not registered: run `make up` first", file=sys.stderr)
        return 2

    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        with shard_run_lock(args.shard) as acquired:
            if acquired:
                rounds = []
                for number in range(1, args.rounds + 1):
                    rounds.append(one_round(args.shard, args.readings, args.metrics, args.late))
                    print(f"round {number}/{args.rounds} done", file=sys.stderr)
                break
        if time.monotonic() > deadline:
            print("the shard's analysis lock stayed taken; try again", file=sys.stderr)
            return 2
        time.sleep(0.5)

    print(f"Rollup benchmark on {args.shard} of the local cluster; {machine(args.shard)}.")
    print(
        f"{args.readings:,} readings of {args.metrics} metrics (one a second each) per round;"
        f" median of {args.rounds} round(s).\n"
    )
    print(table(rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
