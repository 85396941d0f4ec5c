"""The figures that need the application in-process: router cost, directory queries, cleanup.

Run by bench/suite.py (`make bench`); each subcommand prints one JSON object.

    router               a device's read through the router and the fence (`for_device`)
                         against the same read with an explicit `.using(alias)`,
                         interleaved rounds
    directory-queries    queries per database for steady-state device uploads, through
                         the whole Django stack (Client -> URLconf -> API -> shard), counted
                         at the cursor of every connection
    cleanup PREFIX       delete the devices whose serial starts with PREFIX (the load
                         runs' swarm), with all their rows on every shard

Works on the running local cluster (core.settings), with throw-away devices that
are deleted afterwards.
"""

import argparse
import json
import logging
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")

import django  # noqa: E402

django.setup()

from contextlib import ExitStack  # noqa: E402

from django.db import connections  # noqa: E402
from django.test import Client  # noqa: E402

from core.devices import create_device  # noqa: E402
from core.models import Device, Placement  # noqa: E402
from routers.aliases import DIRECTORY_ALIAS  # noqa: E402
from routers.placement import shard_for_device  # noqa: E402
from shards.deletion import delete_devices_now  # noqa: E402
from shards.models import Reading, Upload  # noqa: E402

T0 = datetime(2026, 2, 1, tzinfo=UTC)


def delete_devices(device_ids: list[int]) -> None:
    """Every row of these devices on every shard, then the devices (placements go too)."""
    if device_ids:
        delete_devices_now(device_ids)


def fill(alias: str, device_id: int, count: int) -> None:
    rows = [
        Reading(device_id=device_id, metric=f"m{i % 4}", ts=T0 + timedelta(seconds=i), value=i)
        for i in range(count)
    ]
    Reading.objects.on_shard(alias).bulk_create(rows, batch_size=1000)


def router_figure(rounds: int, calls: int) -> dict:
    """Seconds per read, via the router and via `.using()`, median over interleaved rounds."""
    device = create_device(f"bench-router-{uuid.uuid4().hex[:8]}").device
    try:
        alias = shard_for_device(device.pk)
        fill(alias, device.pk, 2000)

        def routed() -> None:
            list(Reading.objects.for_device(device.pk).filter(metric="m1").order_by("-ts")[:20])

        def explicit() -> None:
            list(
                Reading.objects.using(alias)
                .filter(device_id=device.pk, metric="m1")
                .order_by("-ts")[:20]
            )

        for read in (routed, explicit):  # warm connections and caches
            for _ in range(50):
                read()
        times: dict[str, list[float]] = {"router": [], "using": []}
        for number in range(rounds):
            order = [("router", routed), ("using", explicit)]
            if number % 2:
                order.reverse()
            for name, read in order:
                started = time.perf_counter()
                for _ in range(calls):
                    read()
                times[name].append((time.perf_counter() - started) / calls)
    finally:
        delete_devices([device.pk])
    router, using = statistics.median(times["router"]), statistics.median(times["using"])
    return {
        "shard": alias,
        "rounds": rounds,
        "calls_per_round": calls,
        "router_ms": router * 1000,
        "using_ms": using * 1000,
        "ratio": router / using,
        "router_ms_all": [t * 1000 for t in times["router"]],
        "using_ms_all": [t * 1000 for t in times["using"]],
    }


def directory_queries_figure(requests: int) -> dict:
    """Queries per alias over `requests` uploads after one warm-up request."""
    logging.getLogger("fleet.requests").setLevel(logging.WARNING)  # one line per request
    made = create_device(f"bench-dirq-{uuid.uuid4().hex[:8]}")
    device_id = made.device.pk
    client = Client(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION=f"Bearer {made.token}")
    counts: Counter[str] = Counter()

    def recorder(alias: str):
        def wrapper(execute, sql, params, many, context):
            counts[alias] += 1
            return execute(sql, params, many, context)

        return wrapper

    def upload(number: int) -> None:
        readings = [
            {"ts": (T0 + timedelta(seconds=number * 10 + i)).isoformat(), "metric": "q", "value": i}
            for i in range(10)
        ]
        response = client.post(
            "/api/v1/device/uploads",
            data={"batch_id": f"dirq-{number}", "readings": readings},
            content_type="application/json",
        )
        assert response.status_code == 202, response.content

    try:
        upload(0)  # token and placement from the directory, once
        with ExitStack() as stack:
            for alias in list(connections.settings):
                stack.enter_context(connections[alias].execute_wrapper(recorder(alias)))
            started = time.perf_counter()
            for number in range(1, requests + 1):
                upload(number)
            seconds = time.perf_counter() - started
        shard = Placement.objects.get(device_id=device_id).shard_id
        deadline = time.monotonic() + 60
        while (
            Upload.objects.for_device(device_id).filter(status="staged").exists()
            and time.monotonic() < deadline
        ):
            time.sleep(0.5)  # let the cluster's worker import them before the rows go
    finally:
        delete_devices([device_id])
    directory = counts.get(DIRECTORY_ALIAS, 0)
    return {
        "requests": requests,
        "seconds": seconds,
        "directory_queries": directory,
        "directory_queries_per_request": directory / requests,
        "shard": shard,
        "shard_queries_per_request": counts.get(shard, 0) / requests,
        "queries_by_alias": dict(counts),
    }


def cleanup(prefix: str) -> dict:
    device_ids = list(Device.objects.filter(serial__startswith=prefix).values_list("pk", flat=True))
    for start in range(0, len(device_ids), 200):
        delete_devices(device_ids[start : start + 200])
    return {"deleted_devices": len(device_ids)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    router = commands.add_parser("router")
    router.add_argument("--rounds", type=int, default=7)
    router.add_argument("--calls", type=int, default=500)
    queries = commands.add_parser("directory-queries")
    queries.add_argument("--requests", type=int, default=200)
    clean = commands.add_parser("cleanup")
    clean.add_argument("prefix")
    args = parser.parse_args()
    if args.command == "router":
        result = router_figure(args.rounds, args.calls)
    elif args.command == "directory-queries":
        result = directory_queries_figure(args.requests)
    else:
        if len(args.prefix) < 6:
            parser.error("the prefix is too short to be a load run's")
        result = cleanup(args.prefix)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
