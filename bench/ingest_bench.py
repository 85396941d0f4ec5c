"""Ingest throughput against the local cluster: the import path measured against raw COPY.

Run: .venv/bin/python bench/ingest_bench.py --readings 200000   (or `make bench`)

In one run, on one shard of the running local cluster (not the test databases),
each round measures (a) COPY of N readings straight into shards_reading, the
fastest a shard takes rows, and (b) the ingest path: stage_upload the same N
readings in batches, then import them as a worker's import task does
(shards.ingest.import_staged: claims of IMPORT_BATCH_UPLOADS uploads, one
statement each) in this process (no worker, so the figure is the import code
itself, not queueing). Each measurement uses its
own throw-away device, made with core.devices.create_device and deleted with
all its rows afterwards. The table shows the median round and the spread, as a
small VM's timings move by a third from one round to the next. Staging queues
import tasks to a Redis database of the bench's own, emptied afterwards, and the
cluster's own Celery worker and beat are stopped while the bench runs (started
again afterwards), so nothing of the cluster imports behind the bench's back.

Then (c): the same batches staged for 8 devices with their import kicks queued, and a
Celery worker of the cluster's shape (prefork, 2 processes) started on the bench's
broker database; the time from the worker being ready to the last upload imported.
Against (b)'s in-process import it shows what the task machinery costs.
"""

import argparse
import contextlib
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

from host_facts import describe  # noqa: E402  (bench/, the script's own directory)

from cluster import celery_procs  # noqa: E402  (needs the repo on sys.path)
from core import local_cluster  # noqa: E402

BENCH_BROKER_DB = int(os.environ.get("BENCH_BROKER_DB", "15"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")
# The cluster's own broker, for its worker and beat when the bench starts them again.
CLUSTER_BROKER_URL = os.environ.get("CELERY_BROKER_URL")
os.environ["CELERY_BROKER_URL"] = local_cluster.redis_url(BENCH_BROKER_DB)

import django  # noqa: E402

django.setup()

import redis  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connections, transaction  # noqa: E402

from core.devices import create_device  # noqa: E402
from core.models import Device  # noqa: E402
from routers.aliases import DIRECTORY_ALIAS  # noqa: E402
from routers.placement import invalidate_placement  # noqa: E402
from routers.registry import refresh_registry  # noqa: E402
from shards.import_queue import release_kick  # noqa: E402
from shards.ingest import import_staged, stage_upload  # noqa: E402
from shards.models import DeviceFence, DeviceStatus, LatestValue, Reading, Upload  # noqa: E402
from tests.worker import CeleryWorker  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TARGET_RATIO = 0.50
COPY = "raw COPY into shards_reading"
STAGE = "stage_upload"
IMPORT = "import_staged"
WHOLE = "stage + import (the ingest path)"
WORKER = "a Celery worker (2 processes) importing the queued uploads"
WORKER_DEVICES = 8


@dataclass(frozen=True)
class Phase:
    readings: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.readings / self.seconds


def make_readings(count: int, metrics: int) -> list[dict]:
    """`count` readings, one per metric per second, as the API hands them to staging."""
    names = [f"metric_{m:02d}" for m in range(metrics)]
    return [
        {"ts": T0 + timedelta(seconds=i // metrics), "metric": names[i % metrics], "value": i * 0.5}
        for i in range(count)
    ]


def count_readings(alias: str, device_id: int) -> int:
    return Reading.objects.on_shard(alias).filter(device_id=device_id).count()


def raw_copy(alias: str, device_id: int, readings: list[dict]) -> Phase:
    """COPY from a text buffer prepared beforehand: only the database's work is timed."""
    buffer = io.StringIO(
        "".join(
            f"{device_id}\t{r['metric']}\t{r['ts'].isoformat()}\t{r['value']!r}\n" for r in readings
        )
    )
    started = time.perf_counter()
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        cursor.cursor.copy_expert(
            "COPY shards_reading (device_id, metric, ts, value) FROM STDIN", buffer
        )
    seconds = time.perf_counter() - started
    assert count_readings(alias, device_id) == len(readings), "COPY stored a different count"
    return Phase(len(readings), seconds)


def ingest_path(
    alias: str, device_id: int, readings: list[dict], batch_size: int
) -> tuple[Phase, Phase]:
    """stage_upload every batch, then import them all as the import task does; timed apart."""
    started = time.perf_counter()
    for number, start in enumerate(range(0, len(readings), batch_size)):
        staged = stage_upload(device_id, f"bench-{number}", readings[start : start + batch_size])
        assert staged.created, number
    staged_at = time.perf_counter()
    imported, left = import_staged(
        alias,
        batch=settings.IMPORT_BATCH_UPLOADS,
        budget_seconds=float("inf"),
        max_readings=settings.IMPORT_CLAIM_READINGS,
    )
    imported_at = time.perf_counter()
    release_kick(alias)  # as the task does: the kicks above are answered
    assert imported == -(-len(readings) // batch_size) and not left, (imported, left)
    return (
        Phase(len(readings), staged_at - started),
        Phase(len(readings), imported_at - staged_at),
    )


def worker_drain(alias: str, devices: list[int], readings: list[dict], batch_size: int) -> Phase:
    """Stage every batch, for several devices in turn as a fleet sends them (one device's
    imports would queue for its own rows), their tasks waiting in the bench's broker
    database; then time a worker importing them all, from the moment it is ready."""
    for number, start in enumerate(range(0, len(readings), batch_size)):
        device_id = devices[number % len(devices)]
        stage_upload(device_id, f"bench-worker-{number}", readings[start : start + batch_size])
    staged = Upload.objects.on_shard(alias).filter(device_id__in=devices, status="staged")
    # The tests' worker process, on this process's broker (the bench's own database).
    worker = CeleryWorker(log_path=local_cluster.VAR_DIR / "log" / "bench-worker.log")
    worker.start()  # returns once the worker is ready
    try:
        started = time.perf_counter()
        while staged.exists():
            time.sleep(0.02)
        seconds = time.perf_counter() - started
    finally:
        worker.stop()
    return Phase(len(readings), seconds)


def settle(alias: str) -> None:
    """Start each measurement alike: no dead rows left by the last, no checkpoint due."""
    with connections[alias].cursor() as cursor:
        cursor.execute("VACUUM ANALYZE shards_reading")
        cursor.execute("VACUUM ANALYZE shards_upload")
        cursor.execute("CHECKPOINT")


def delete_device(alias: str, device_id: int) -> None:
    for model in (Reading, LatestValue, Upload, DeviceStatus, DeviceFence):
        model.objects.on_shard(alias).filter(device_id=device_id).delete()
    Device.objects.filter(pk=device_id).delete()
    invalidate_placement(device_id)


def one_round(alias: str, readings: list[dict], batch_size: int) -> dict[str, Phase]:
    """Both measurements, each on a fresh throw-away device that is deleted afterwards."""
    run = uuid.uuid4().hex[:8]
    copy_device = create_device(f"bench-copy-{run}", shard=alias).device.pk
    try:
        settle(alias)
        copy_phase = raw_copy(alias, copy_device, readings)
    finally:
        delete_device(alias, copy_device)
    import_device = create_device(f"bench-import-{run}", shard=alias).device.pk
    try:
        settle(alias)
        stage_phase, import_phase = ingest_path(alias, import_device, readings, batch_size)
        assert count_readings(alias, import_device) == len(readings), "import lost readings"
    finally:
        delete_device(alias, import_device)
    whole = Phase(len(readings), stage_phase.seconds + import_phase.seconds)
    fleet = [
        create_device(f"bench-worker-{run}-{n}", shard=alias).device.pk
        for n in range(WORKER_DEVICES)
    ]
    try:
        settle(alias)
        worker_phase = worker_drain(alias, fleet, readings, batch_size)
        stored = sum(count_readings(alias, device_id) for device_id in fleet)
        assert stored == len(readings), "the worker lost readings"
    finally:
        for device_id in fleet:
            delete_device(alias, device_id)
    return {
        COPY: copy_phase, STAGE: stage_phase, IMPORT: import_phase, WHOLE: whole,
        WORKER: worker_phase,
    }  # fmt: skip


@contextlib.contextmanager
def cluster_celery_paused():
    """Stop the cluster's worker and beat (beat kicks every shard's import), then restart."""
    processes = [
        celery_procs.worker(local_cluster.VAR_DIR),
        celery_procs.beat(local_cluster.VAR_DIR),
    ]
    stopped = [process for process in processes if process.stop()]
    try:
        yield
    finally:
        # They inherit this process's environment: give them the cluster's broker back.
        bench_broker = os.environ["CELERY_BROKER_URL"]
        if CLUSTER_BROKER_URL is None:
            del os.environ["CELERY_BROKER_URL"]
        else:
            os.environ["CELERY_BROKER_URL"] = CLUSTER_BROKER_URL
        try:
            for process in stopped:
                process.ensure_running()
        finally:
            os.environ["CELERY_BROKER_URL"] = bench_broker


def median(phases: list[Phase]) -> Phase:
    return sorted(phases, key=lambda phase: phase.seconds)[len(phases) // 2]


def machine() -> str:
    with connections[DIRECTORY_ALIAS].cursor() as cursor:
        cursor.execute("SHOW server_version")
        return describe(cursor.fetchone()[0].split()[0])


def table(rounds: list[dict[str, Phase]], batch_size: int) -> str:
    names = {
        COPY: COPY,
        STAGE: f"stage_upload ({batch_size} readings a batch)",
        IMPORT: IMPORT,
        WHOLE: WHOLE,
        WORKER: WORKER,
    }
    copy_rate = median([r[COPY] for r in rounds]).per_second
    lines = [
        "| path | readings | seconds | readings/s | of raw COPY | readings/s, all rounds |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for key, name in names.items():
        middle = median([r[key] for r in rounds])
        spread = ", ".join(f"{r[key].per_second:,.0f}" for r in rounds)
        lines.append(
            f"| {name} | {middle.readings:,} | {middle.seconds:.2f} |"
            f" {middle.per_second:,.0f} | {middle.per_second / copy_rate:.0%} | {spread} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=200_000, help="Readings per phase.")
    parser.add_argument("--batch", type=int, default=1000, help="Readings per staged upload.")
    parser.add_argument("--metrics", type=int, default=10, help="Distinct metrics per device.")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds; the median is shown.")
    parser.add_argument("--shard", default="shard_1", help="Shard alias of the local cluster.")
    args = parser.parse_args()

    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    if broker.dbsize():
        print(
            f"Redis database {BENCH_BROKER_DB} is not empty; the bench empties it afterwards,"
            " so it refuses to use it. Pick another with BENCH_BROKER_DB.",
            file=sys.stderr,
        )
        return 2
    if args.shard not in refresh_registry(force=True):
        print(f"{args.shard} is not registered: run `make up` first", file=sys.stderr)
        return 2

    readings = make_readings(args.readings, args.metrics)
    rounds: list[dict[str, Phase]] = []
    try:
        with cluster_celery_paused():
            for number in range(1, args.rounds + 1):
                rounds.append(one_round(args.shard, readings, args.batch))
                print(f"round {number}/{args.rounds} done", file=sys.stderr)
    finally:
        broker.flushdb()

    copy_rate = median([r[COPY] for r in rounds]).per_second
    ratio = median([r[IMPORT] for r in rounds]).per_second / copy_rate
    whole = median([r[WHOLE] for r in rounds]).per_second / copy_rate
    print(f"Ingest benchmark on {args.shard} of the local cluster; {machine()}.")
    print(f"{args.readings:,} readings per measurement; median of {args.rounds} round(s).\n")
    print(table(rounds, args.batch))
    verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
    worker = median([r[WORKER] for r in rounds]).per_second
    in_process = median([r[IMPORT] for r in rounds]).per_second
    print(
        f"\nimport_staged runs at {ratio:.0%} of raw COPY ({verdict} the"
        f" {TARGET_RATIO:.0%} target); stage + import together at {whole:.0%}; a 2-process"
        f" worker imports at {worker / in_process:.0%} of one in-process import loop."
    )
    return 0 if ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
