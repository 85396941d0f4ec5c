"""Rebalancing 200 small devices from two shards onto a new third, N moves at a time, under load.

Run: make bench-rebalance   (or .venv/bin/python bench/rebalance_bench.py --parallel 1 4;
     the local cluster must be up)

If only two shards are registered, a third is added first (`python -m cluster
add-shard`: a PostgreSQL instance of its own, kept afterwards). Then, for each N
given with --parallel, one round on the same starting point:

1. 200 devices are made, half on each of shard_1 and shard_2, each with 100
   readings (COPY); the third shard holds none of them.
2. 16 of them (8 on each shard) upload a 10-reading batch through HAProxy every
   500 ms, one thread each (a load the cluster's import keeps up with), for the
   whole round; after 3 s of warm-up, 5 s of that before the rebalance give the
   baseline upload latency.
3. `manage.py rebalance --cost devices --parallel N --max-per-target N` runs as
   its own process, as an operator runs it (the default throttle): its wall time,
   and p50/p99/max of the uploads sent while it ran; the run's own time (from its
   record: the moves, without the process start and planning) beside it, and
   moves per second of that. By devices, so every round moves a third of them
   whatever the uploads added (by rows, the uploading devices would soon
   outweigh the rest); the uploading devices have the lowest ids, so the plan
   moves them first.
4. The uploads stop, and the round is verified: every acknowledged batch stored
   exactly once, with its readings, on the shard that owns the device, and every
   one of the 200 devices owned by exactly one shard with all its readings.
5. The devices are deleted (and the workers' purge of them awaited); devices
   that were there before and were moved too are moved back.

Writes bench/results/rebalance-<timestamp>.json and prints a markdown table.
"""

import argparse
import json
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime

from django.db import connections

# bench/move_bench.py (the script's own directory) sets Django up as it is imported.
from move_bench import (
    REPO_ROOT,
    Writer,
    cluster_url,
    delete_everywhere,
    fill_readings,
    percentile,
)

from core.devices import create_device
from core.models import DeviceDeletion, Placement
from routers.registry import refresh_registry
from shards.fence import held_devices
from shards.models import Reading, Upload
from shards.moves.protocol import move_device
from shards.stats import import_lag_seconds

RESULTS = REPO_ROOT / "bench" / "results"
HOME_SHARDS = ("shard_1", "shard_2")
FILL_METRIC_PREFIX = "metric_"
UPLOAD_METRIC = "load"  # what Writer sends
# Uploads before the baseline window: connections, caches and the new shard settle.
WARM_UP_SECONDS = 3.0


def ensure_third_shard() -> str:
    """The first registered active shard beyond shard_1 and shard_2; added if there is none."""
    registry = refresh_registry(force=True)
    extra = sorted(alias for alias, info in registry.items() if alias not in HOME_SHARDS)
    if not extra:
        subprocess.run([sys.executable, "-m", "cluster", "add-shard"], cwd=REPO_ROOT, check=True)
        registry = refresh_registry(force=True)
        extra = sorted(alias for alias in registry if alias not in HOME_SHARDS)
    return extra[0]


class LagSampler(threading.Thread):
    """The highest import lag seen on each shard while the round runs, sampled every second."""

    def __init__(self, aliases: list[str]) -> None:
        super().__init__(daemon=True)
        self.aliases = aliases
        self.most: dict[str, float] = dict.fromkeys(aliases, 0.0)
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.wait(1.0):
                for alias in self.aliases:
                    self.most[alias] = max(self.most[alias], import_lag_seconds(alias))
        finally:
            connections.close_all()


def owners(device_ids: list[int], aliases: list[str]) -> dict[int, list[str]]:
    """The shards whose fence says they own each device (exactly one when all is well)."""
    owned: dict[int, list[str]] = {device_id: [] for device_id in device_ids}
    for alias in aliases:
        for device_id in held_devices(alias).filter(device_id__in=device_ids):
            owned[device_id].append(alias)
    return owned


def wait_imported(writers: list[Writer], timeout: float = 120.0) -> int:
    """Until the writers' uploads are imported where the devices live; how many are not.

    Only the owning shard counts: the staged copy a moved device left on its old
    shard is never imported there (it goes at cleanup).
    """
    placed = dict(
        Placement.objects.filter(device_id__in=[w.device_id for w in writers]).values_list(
            "device_id", "shard_id"
        )
    )
    deadline = time.monotonic() + timeout
    while True:
        staged = sum(
            Upload.objects.on_shard(alias)
            .filter(device_id=device_id, status=Upload.Status.STAGED)
            .count()
            for device_id, alias in placed.items()
        )
        if not staged or time.monotonic() > deadline:
            return staged
        time.sleep(0.5)


def wait_deletions_done(timeout: float = 120.0) -> None:
    """Until the workers have purged the deleted devices, so the next round starts quiet."""
    deadline = time.monotonic() + timeout
    while DeviceDeletion.objects.filter(finished_at__isnull=True).exists():
        if time.monotonic() > deadline:
            raise RuntimeError("deleted devices still not purged after 120 s")
        time.sleep(0.5)


def verify(
    device_ids: list[int], writers: list[Writer], aliases: list[str], readings: int
) -> list[str]:
    """What is wrong with the round's data; empty when everything verified."""
    problems = []
    staged = wait_imported(writers)
    if staged:
        problems.append(f"{staged} uploads still staged after 120 s")
    placed = dict(
        Placement.objects.filter(device_id__in=device_ids).values_list("device_id", "shard_id")
    )
    owned = owners(device_ids, aliases)
    for device_id in device_ids:
        if owned[device_id] != [placed.get(device_id)]:
            where = f"owned by {owned[device_id]}, placed on {placed.get(device_id)}"
            problems.append(f"device {device_id}: {where}")
            continue
        filled = (
            Reading.objects.on_shard(placed[device_id])
            .filter(device_id=device_id, metric__startswith=FILL_METRIC_PREFIX)
            .count()
        )
        if filled != readings:
            problems.append(f"device {device_id}: {filled} of its {readings} readings")
    for writer in writers:
        home = placed[writer.device_id]
        sent = {f"bench-{n}": status for n, (_, _, status) in enumerate(writer.requests, 1)}
        acknowledged = {batch for batch, status in sent.items() if status == 202}
        unanswered = {batch for batch, status in sent.items() if status is None}
        stored = list(
            Upload.objects.on_shard(home)
            .filter(device_id=writer.device_id)
            .values_list("batch_id", flat=True)
        )
        doubled = [batch for batch, count in Counter(stored).items() if count > 1]
        missing = acknowledged - set(stored)
        unknown = set(stored) - acknowledged - unanswered
        landed = len(set(stored) & unanswered)
        expected = 10 * (len(acknowledged) + landed)
        got = (
            Reading.objects.on_shard(home)
            .filter(device_id=writer.device_id, metric=UPLOAD_METRIC)
            .count()
        )
        for what, wrong in (("doubled", doubled), ("missing", missing), ("unknown", unknown)):
            if wrong:
                problems.append(f"device {writer.device_id}: batches {what}: {sorted(wrong)[:5]}")
        if got != expected:
            problems.append(
                f"device {writer.device_id}: {got} uploaded readings, {expected} acknowledged"
            )
    return problems


def rebalance(parallel: int) -> tuple[float, dict, str]:
    """`manage.py rebalance` as an operator runs it; its wall time, --json output, stderr."""
    command = [
        sys.executable, "manage.py", "rebalance", "--json", "--cost", "devices",
        "--parallel", str(parallel), "--max-per-target", str(parallel),
    ]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"rebalance exited {proc.returncode}: {proc.stderr[-2000:]}")
    return seconds, json.loads(proc.stdout), proc.stderr


def one_round(args: argparse.Namespace, parallel: int, aliases: list[str], base_url: str) -> dict:
    before = dict(Placement.objects.values_list("device_id", "shard_id"))
    made = [
        create_device(f"bench-rb-{uuid.uuid4().hex[:8]}", shard=HOME_SHARDS[n % 2])
        for n in range(args.devices)
    ]
    ids = [new.device.pk for new in made]
    for n, device_id in enumerate(ids):
        fill_readings(HOME_SHARDS[n % 2], device_id, args.readings)
    writers = [
        Writer(new.device.pk, new.token, base_url, interval=args.upload_interval)
        for new in made[: args.uploaders]
    ]
    threads = [threading.Thread(target=w.run, daemon=True) for w in writers]
    lag = LagSampler(aliases)
    try:
        for thread in threads:
            thread.start()
        lag.start()
        time.sleep(WARM_UP_SECONDS + args.baseline)
        baseline_end = time.perf_counter()
        started = time.perf_counter()
        seconds, result, _ = rebalance(parallel)
        ended = time.perf_counter()
        time.sleep(1)
    finally:
        for writer in writers:
            writer.stop.set()
        for thread in threads:
            thread.join(timeout=60)
        lag.stop.set()
        lag.join(timeout=10)

    def latencies(start: float, end: float) -> list[float]:
        return [
            (done - began) * 1000
            for writer in writers
            for began, done, _ in writer.requests
            if start <= began <= end
        ]

    during = latencies(started, ended)
    baseline = latencies(baseline_end - args.baseline, baseline_end)
    failures = Counter(str(status) for w in writers for _, _, status in w.requests if status != 202)
    problems = verify(ids, writers, aliases, args.readings)
    run = result.get("run") or {}
    try:
        delete_everywhere(ids, aliases)
        wait_deletions_done()
    finally:
        for device_id, alias in before.items():
            now = (
                Placement.objects.filter(device_id=device_id)
                .values_list("shard_id", flat=True)
                .first()
            )
            if now and now != alias:
                move_device(device_id, alias, requested_by="rebalance_bench: put back")
    return {
        "parallel": parallel,
        "moves": run.get("counts", {}).get("moved", 0),
        "failed_moves": run.get("counts", {}).get("failed", 0),
        "seconds": round(seconds, 2),
        "moving_seconds": round(
            (
                datetime.fromisoformat(run["finished_at"])
                - datetime.fromisoformat(run["created_at"])
            ).total_seconds(),
            2,
        )
        if run.get("finished_at")
        else None,
        "held_seconds": run.get("held_seconds", 0.0),
        "loads_before": run.get("loads_before"),
        "loads_after": run.get("loads_after"),
        "uploads_during": len(during),
        "p50_ms": round(percentile(during, 0.5), 1) if during else None,
        "p99_ms": round(percentile(during, 0.99), 1) if during else None,
        "max_ms": round(max(during), 1) if during else None,
        "baseline_p50_ms": round(percentile(baseline, 0.5), 1) if baseline else None,
        "baseline_p99_ms": round(percentile(baseline, 0.99), 1) if baseline else None,
        "stall_ms_p99": round(
            percentile([m["stall_ms"] or 0.0 for m in run.get("moves", [])], 0.99), 1
        )
        if run.get("moves")
        else None,
        "failed_uploads": dict(failures),
        "most_import_lag_s": {alias: round(value, 2) for alias, value in lag.most.items()},
        "problems": problems,
        "verified": not problems,
    }


def markdown(rounds: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"{args.devices} devices of {args.readings} readings, half on shard_1 and half on"
        f" shard_2, rebalanced onto an empty third shard (by devices); {args.uploaders} of them"
        f" upload a 10-reading batch every {args.upload_interval * 1000:.0f} ms through HAProxy"
        " meanwhile.",
        "",
        "| moves at once | moves | wall s | run s | moves/s | held by the throttle s |"
        " uploads during | upload p50 ms | upload p99 ms | upload max ms | baseline p99 ms |"
        " writers held p99 ms | most import lag s | failed uploads | verified |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rounds:
        moving = r["moving_seconds"] or r["seconds"]
        rate = r["moves"] / moving if moving else 0.0
        failed = sum(r["failed_uploads"].values())
        lines.append(
            f"| {r['parallel']} | {r['moves']} | {r['seconds']:.1f} | {moving:.1f} | {rate:.1f} |"
            f" {r['held_seconds']:.0f} | {r['uploads_during']} | {r['p50_ms']} | {r['p99_ms']} |"
            f" {r['max_ms']} | {r['baseline_p99_ms']} | {r['stall_ms_p99']} |"
            f" {max(r['most_import_lag_s'].values()):.1f} | {failed} |"
            f" {'yes' if r['verified'] else 'NO'} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 4], help="N per round.")
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--readings", type=int, default=100, help="Readings per device.")
    parser.add_argument("--uploaders", type=int, default=16, help="Devices uploading meanwhile.")
    parser.add_argument("--upload-interval", type=float, default=0.5, help="Seconds between.")
    parser.add_argument("--baseline", type=float, default=5.0, help="Seconds of load before.")
    args = parser.parse_args()

    third = ensure_third_shard()
    aliases = [*HOME_SHARDS, third]
    base_url = cluster_url()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    rounds = []
    for parallel in args.parallel:
        print(f"round: --parallel {parallel}", file=sys.stderr)
        rounds.append(one_round(args, parallel, aliases, base_url))
        print(json.dumps(rounds[-1], default=str), file=sys.stderr)
    table = markdown(rounds, args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"rebalance-{stamp}.json").write_text(
        json.dumps({"args": vars(args), "third_shard": third, "rounds": rounds}, indent=1)
    )
    print(table)
    for r in rounds:
        for problem in r["problems"][:20]:
            print(f"--parallel {r['parallel']}: {problem}")
    print(f"\nbench/results/rebalance-{stamp}.json")
    return 0 if all(r["verified"] and not r["failed_moves"] for r in rounds) else 1


if __name__ == "__main__":
    sys.exit(main())
