"""Moving devices between shards: copy speed against raw COPY, and the writer stall under load.

Run: .venv/bin/python bench/move_bench.py   (or `make bench`; the local cluster must be up)

Part 1, in each round on the running local cluster: a throw-away device on the
source shard gets N readings (COPY); then (a) a raw COPY of those rows from the
source's server to a plain copy of the readings table on the target's server,
streamed through this process (COPY TO STDOUT piped into COPY FROM STDIN, the
fastest way rows travel between two PostgreSQL servers), and (b) the online
move of that device (shards.moves.protocol.move_device: bulk copy, fence,
remainder, verification, switch) are timed. Rows per second of (b) against
(a) is the figure, median of the rounds.

Part 2: devices upload small batches continuously through HAProxy, one
thread each, while they are moved one after another. For each moved device
the stall is the time the source held its writers (the fenced window the mover
records as the job's stall_ms), shown beside what the device saw: its slowest
upload overlapping that window (the hold plus its own request time), its
slowest upload during the whole move (a big device's bulk copy also takes CPU
from everyone on a small machine), and the uploads' own p99 while no move was
in flight. p50/p99/max over the moved devices; every upload must succeed.
It runs for small and big devices (10,000 and 1,000,000 readings by default),
side by side: the stall must stay short whatever the device's size.

Part 3: how late a held writer goes on. A device's fence is set to 'fenced' for
20-100 ms while a writer waits for it; the figure is the time from the fence
lifting to the writer's return, with the mover's gate held (what a move does:
the writer queues on it) against no gate (a mover that died: the writer polls).
Throw-away devices are deleted with all their rows afterwards.
"""

import argparse
import http.client
import io
import json
import os
import random
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")

import django  # noqa: E402

django.setup()

from django.db import connections  # noqa: E402

from core import local_cluster  # noqa: E402
from core.devices import create_device  # noqa: E402
from routers.registry import refresh_registry  # noqa: E402
from shards.deletion import delete_devices_now  # noqa: E402
from shards.fence import close_gate, write_for_device  # noqa: E402
from shards.models import DeviceFence, Reading  # noqa: E402
from shards.moves.protocol import move_device  # noqa: E402
from shards.moves.report import rows_moved  # noqa: E402
from shards.moves.streams import pipe_copy, raw_connection, raw_connections  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=UTC)
COPY_TARGET_RATIO = 0.30
# The writers' stall, whatever the device's size (p99 of the fenced window, stall_ms).
STALL_TARGET_MS = 100.0
RAW_TABLE = "bench_raw_copy"
UPLOAD_PATH = "/api/v1/device/uploads"


def fill_readings(alias: str, device_id: int, count: int, metrics: int = 10) -> None:
    """COPY `count` readings of a device straight into its shard."""
    lines = (
        f"{device_id}\tmetric_{i % metrics:02d}\t"
        f"{(T0 + timedelta(seconds=i // metrics)).isoformat()}\t{i * 0.5}\n"
        for i in range(count)
    )
    with connections[alias].cursor() as cursor:
        cursor.cursor.copy_expert(
            f"COPY {Reading._meta.db_table} (device_id, metric, ts, value) FROM STDIN",
            io.StringIO("".join(lines)),
        )


def delete_everywhere(device_ids: list[int], aliases: list[str]) -> None:
    delete_devices_now(device_ids)  # every shard's rows, placements and move jobs


def settle(aliases: list[str]) -> None:
    for alias in aliases:
        with connections[alias].cursor() as cursor:
            cursor.execute(f"VACUUM ANALYZE {Reading._meta.db_table}")
            cursor.execute("CHECKPOINT")


def raw_copy_seconds(source: str, target: str, device_id: int) -> float:
    """COPY the device's readings from source to a plain table like readings on target."""
    columns = "device_id, metric, ts, value"
    with raw_connections(source, target) as (source_conn, target_conn):
        with target_conn.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {RAW_TABLE}")
            cursor.execute(
                f"CREATE TABLE {RAW_TABLE} (LIKE {Reading._meta.db_table} INCLUDING ALL)"
            )
        target_conn.commit()
        try:
            with source_conn.cursor() as out, target_conn.cursor() as into:
                started = time.perf_counter()
                select = out.mogrify(
                    f"SELECT {columns} FROM {Reading._meta.db_table} WHERE device_id = %s",
                    [device_id],
                ).decode()
                pipe_copy(out, select, into, f"{RAW_TABLE} ({columns})")
                target_conn.commit()
                seconds = time.perf_counter() - started
        finally:
            with target_conn.cursor() as cursor:
                cursor.execute(f"DROP TABLE IF EXISTS {RAW_TABLE}")
            target_conn.commit()
    return seconds


@dataclass
class CopyRound:
    rows: int
    raw_seconds: float
    move_seconds: float
    move_rows: int
    stall_ms: float

    @property
    def ratio(self) -> float:
        return (self.move_rows / self.move_seconds) / (self.rows / self.raw_seconds)


def copy_round(source: str, target: str, readings: int) -> CopyRound:
    device = create_device(f"bench-move-{uuid.uuid4().hex[:8]}", shard=source).device
    try:
        fill_readings(source, device.pk, readings)
        settle([source, target])
        raw = raw_copy_seconds(source, target, device.pk)
        settle([source, target])
        started = time.perf_counter()
        job = move_device(device.pk, target, requested_by="move_bench")
        seconds = time.perf_counter() - started
        return CopyRound(readings, raw, seconds, rows_moved(job), job.stall_ms or 0.0)
    finally:
        delete_everywhere([device.pk], [source, target])


@dataclass
class Writer:
    """One device uploading small batches through HAProxy until stopped."""

    device_id: int
    token: str
    base_url: str
    requests: list[tuple[float, float, int | None]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    interval: float = 0.02  # seconds between one answer and the next upload

    def run(self) -> None:
        parts = urlsplit(self.base_url)
        number = 0
        while not self.stop.is_set():
            number += 1
            readings = [
                {"ts": (T0 + timedelta(days=30, seconds=number * 10 + i)).isoformat(),
                 "metric": "load", "value": float(i)}
                for i in range(10)
            ]  # fmt: skip
            body = json.dumps({"batch_id": f"bench-{number}", "readings": readings})
            status = None
            started = time.perf_counter()
            connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
            try:
                connection.request(
                    "POST",
                    UPLOAD_PATH,
                    body=body,
                    headers={
                        "Authorization": f"Bearer {self.token}",
                        "Content-Type": "application/json",
                    },
                )
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = None
            finally:
                connection.close()
            self.requests.append((started, time.perf_counter(), status))
            time.sleep(self.interval)

    def slowest_ms_between(self, start: float, end: float) -> float:
        overlapping = [
            done - began for began, done, _ in self.requests if done >= start and began <= end
        ]
        return max(overlapping, default=0.0) * 1000

    def failures(self) -> list[int | None]:
        return [status for _, _, status in self.requests if status != 202]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def stall_under_load(source: str, target: str, devices: int, readings: int, base_url: str) -> dict:
    made = [
        create_device(f"bench-stall-{uuid.uuid4().hex[:8]}", shard=source) for _ in range(devices)
    ]
    ids = [new.device.pk for new in made]
    writers = [Writer(new.device.pk, new.token, base_url) for new in made]
    threads = [threading.Thread(target=w.run, daemon=True) for w in writers]
    try:
        for device_id in ids:
            fill_readings(source, device_id, readings)
        for thread in threads:
            thread.start()
        time.sleep(2)  # steady state before the first move
        observed, held, fenced, windows = [], [], [], []
        for writer in writers:
            started = time.perf_counter()
            job = move_device(writer.device_id, target, requested_by="move_bench")
            ended = time.perf_counter()
            windows.append((started, ended))
            time.sleep(0.5)  # let held uploads finish before measuring
            observed.append(writer.slowest_ms_between(started, ended))
            fence_start = job.fenced_at.timestamp() - (time.time() - time.perf_counter())
            held.append(writer.slowest_ms_between(fence_start, fence_start + job.stall_ms / 1000))
            fenced.append(job.stall_ms or 0.0)
        time.sleep(1)
    finally:
        for writer in writers:
            writer.stop.set()
        for thread in threads:
            thread.join(timeout=30)
        delete_everywhere(ids, [source, target])
    all_latencies = [(d - b) * 1000 for w in writers for b, d, _ in w.requests]
    # The same uploads' own tail when no move is in flight: what the stall is set against.
    quiet = [
        (done - began) * 1000
        for w in writers
        for began, done, _ in w.requests
        if all(done < start or began > end for start, end in windows)
    ]
    return {
        "devices": devices,
        "uploads": len(all_latencies),
        "failures": len(failed := [status for w in writers for status in w.failures()]),
        "failure_statuses": dict(Counter(failed)),
        "upload_p50_ms": statistics.median(all_latencies) if all_latencies else 0.0,
        "quiet_p99_ms": percentile(quiet, 0.99) if quiet else 0.0,
        "observed_ms": observed,
        "held_ms": held,
        "fenced_ms": fenced,
    }


def wake_up_ms(alias: str, device_id: int, *, gate: bool, hold_ms: float) -> float:
    """Milliseconds from a fenced device's fence lifting to its waiting writer's return."""
    fence = DeviceFence.objects.on_shard(alias).filter(device_id=device_id)
    returned: list[float] = []

    def writer() -> None:
        write_for_device(device_id, lambda alias: None)
        returned.append(time.perf_counter())
        connections.close_all()

    mover = raw_connection(alias)
    try:
        if gate:
            with mover.cursor() as cursor:
                close_gate(cursor, device_id)
        fence.update(state=DeviceFence.State.FENCED)
        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(hold_ms / 1000)
        fence.update(state=DeviceFence.State.ACTIVE)
        lifted = time.perf_counter()
    finally:
        mover.close()  # opens the gate, as the mover does once the fence has lifted
    thread.join(timeout=30)
    return (returned[0] - lifted) * 1000


def wake_up_figures(alias: str, trials: int) -> dict[str, list[float]]:
    device = create_device(f"bench-wake-{uuid.uuid4().hex[:8]}", shard=alias).device
    try:
        return {
            kind: [
                wake_up_ms(alias, device.pk, gate=gate, hold_ms=random.uniform(20, 100))
                for _ in range(trials)
            ]
            for kind, gate in (("at the mover's gate", True), ("polling (no gate)", False))
        }
    finally:
        delete_everywhere([device.pk], [alias])


def cluster_url() -> str:
    state = local_cluster.VAR_DIR / "cluster.json"
    if state.exists():
        return json.loads(state.read_text())["url"]
    return f"http://{local_cluster.HOST}:{local_cluster.HTTP_PORT}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--readings", type=int, default=200_000, help="Readings of the copy device."
    )
    parser.add_argument("--rounds", type=int, default=3, help="Copy rounds; the median is shown.")
    parser.add_argument(
        "--stall-devices", type=int, default=3, help="Devices of each size moved under load."
    )
    parser.add_argument(
        "--stall-readings",
        default="10000,1000000",
        help="Readings of each moved device, one size or several comma-separated.",
    )
    parser.add_argument(
        "--wake-trials", type=int, default=40, help="Held writers timed in part 3, per kind."
    )
    parser.add_argument("--source", default="shard_1")
    parser.add_argument("--target", default="shard_2")
    args = parser.parse_args()

    registry = refresh_registry(force=True)
    for alias in (args.source, args.target):
        if alias not in registry:
            print(f"{alias} is not registered: run `make up` first", file=sys.stderr)
            return 2

    rounds = []
    for number in range(1, args.rounds + 1):
        rounds.append(copy_round(args.source, args.target, args.readings))
        print(f"copy round {number}/{args.rounds} done", file=sys.stderr)
    sizes = [int(size) for size in args.stall_readings.split(",") if size.strip()]
    stalls = {}
    for size in sizes:
        stalls[size] = stall_under_load(
            args.source, args.target, args.stall_devices, size, cluster_url()
        )
        print(f"stall under load with {size:,} readings done", file=sys.stderr)

    wake_ups = wake_up_figures(args.source, args.wake_trials)

    middle = sorted(rounds, key=lambda r: r.ratio)[len(rounds) // 2]
    raw_rate = middle.rows / middle.raw_seconds
    move_rate = middle.move_rows / middle.move_seconds
    print(f"Move benchmark, {args.source} -> {args.target} of the local cluster.")
    print(f"\nCopy speed: {args.readings:,} readings, median of {args.rounds} round(s)\n")
    print("| path | rows | seconds | rows/s | of raw COPY | ratio, all rounds |")
    print("|---|---:|---:|---:|---:|---|")
    print(
        f"| raw COPY between the two servers | {middle.rows:,} | {middle.raw_seconds:.2f} |"
        f" {raw_rate:,.0f} | 100% | |"
    )
    spread = ", ".join(f"{r.ratio:.0%}" for r in rounds)
    print(
        f"| move_device (copy, fence, verify, switch) | {middle.move_rows:,} |"
        f" {middle.move_seconds:.2f} | {move_rate:,.0f} | {middle.ratio:.0%} | {spread} |"
    )
    uploads = sum(stall["uploads"] for stall in stalls.values())
    failures = sum(stall["failures"] for stall in stalls.values())
    statuses = Counter()
    for stall in stalls.values():
        statuses.update(stall["failure_statuses"])
    p50s = ", ".join(f"{stall['upload_p50_ms']:.0f}" for stall in stalls.values())
    print(
        f"\nWriter stall under load: {args.stall_devices} devices of each size, moved one by"
        f" one while all upload through HAProxy ({uploads} uploads, {failures} failed"
        f" {dict(statuses) or ''}, upload p50 {p50s} ms)\n"
    )
    print(
        "| readings per moved device | the stall: fenced window (writers held)"
        " | slowest upload overlapping it | slowest upload during the whole move"
        " | upload p99 with no move in flight |"
    )
    print("|---:|---:|---:|---:|---:|")
    worst = 0.0

    def spread(values: list[float]) -> str:
        return (
            f"{percentile(values, 0.5):.0f} / {percentile(values, 0.99):.0f} / {max(values):.0f} ms"
        )

    for size, stall in stalls.items():
        worst = max(worst, percentile(stall["fenced_ms"], 0.99))
        print(
            f"| {size:,} | {spread(stall['fenced_ms'])} | {spread(stall['held_ms'])}"
            f" | {spread(stall['observed_ms'])} | {stall['quiet_p99_ms']:.0f} ms |"
        )
    print("\n(p50 / p99 / max over the moved devices)")
    print(
        f"\nA held writer's return after the fence lifts ({args.wake_trials} writers each,"
        " fenced 20-100 ms)\n"
    )
    print("| writer waits | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|")
    for kind, late in wake_ups.items():
        print(
            f"| {kind} | {percentile(late, 0.5):.1f} | {percentile(late, 0.99):.1f} |"
            f" {max(late):.1f} |"
        )
    ok = middle.ratio >= COPY_TARGET_RATIO and worst < STALL_TARGET_MS and failures == 0
    print(
        f"\nmove copies at {middle.ratio:.0%} of raw COPY (target {COPY_TARGET_RATIO:.0%});"
        f" writer stall (fenced window) p99 {worst:.0f} ms at worst over the sizes (target under"
        f" {STALL_TARGET_MS:.0f} ms); {failures} failed uploads."
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
