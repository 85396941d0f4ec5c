"""Shared pieces of the move tests: a device with rows of every kind, row dumps, fences.

Rows are read back with plain SQL per shard (never through the placement), so a
check sees what each database really holds, whatever this process has cached.
"""

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import connections

from core import local_cluster
from core.models import Device
from routers.placement import shard_for_device
from shards.alerts import acknowledge_alert, clear_alert, raise_alert
from shards.analysis.rollups import roll_up_shard
from shards.commands import cancel_command, create_command, deliver_pending, report_result
from shards.ingest import import_upload_now, payload_of
from shards.models import DeviceFence, RawRetention, RollupPending, Upload
from shards.moves.tables import device_tables
from tests.factories import T0
from tests.process_env import child_process_env

METRICS = ("temp", "humidity", "pressure")
WAIT_TIMEOUT = 30.0


def readings_for(first_second: int, count: int, base: float = 0.0) -> list[dict[str, Any]]:
    """One reading per metric and second; the value encodes both, so rows are recognisable."""
    return [
        {"ts": T0 + timedelta(seconds=first_second + i), "metric": metric, "value": base + i + m}
        for i in range(count)
        for m, metric in enumerate(METRICS)
    ]


def store_staged(device_id: int, batch_id: str, readings: list[dict[str, Any]]) -> Upload:
    """A staged upload written directly: no import task is queued, so no worker races us."""
    payload = payload_of(readings)
    return Upload.objects.for_device(device_id).create(
        device_id=device_id, batch_id=batch_id, payload=payload, reading_count=len(payload)
    )


@dataclass
class PopulatedDevice:
    """A device with imported and staged uploads and commands in every state a user sees."""

    device: Device
    imported: list[Upload]
    staged: Upload
    staged_readings: list[dict[str, Any]]
    commands: dict[str, int] = field(default_factory=dict)

    @property
    def pk(self) -> int:
        return self.device.pk


def populate_device(device: Device, *, uploads: int = 3, per_upload: int = 20) -> PopulatedDevice:
    """Uploads (imported and one staged), readings, latest values, status, commands, alerts,
    rollups, a pending rollup mark and a retention watermark."""
    imported = []
    for n in range(uploads):
        upload = store_staged(device.pk, f"b-{n}", readings_for(n * per_upload, per_upload))
        assert import_upload_now(device.pk, upload.pk) == Upload.Status.IMPORTED
        imported.append(upload)
    alias = shard_for_device(device.pk)
    assert roll_up_shard(alias).changed  # minute, hour and day rollups
    RollupPending.objects.on_shard(alias).create(
        device_id=device.pk, metric=METRICS[0], minute=T0, marked_at=T0
    )
    RawRetention.objects.on_shard(alias).create(
        device_id=device.pk, raw_since=T0 - timedelta(days=30)
    )
    staged_readings = readings_for(uploads * per_upload, 10, base=1000.0)
    staged = store_staged(device.pk, "b-staged", staged_readings)

    commands = {
        status: create_command(device.pk, f"do-{status}", {"status": status}).pk
        for status in ("sent", "acknowledged", "succeeded", "failed", "cancelled")
    }
    cancel_command(device.pk, commands["cancelled"])
    delivered = {command.pk for command in deliver_pending(device.pk)}
    assert delivered == {commands[s] for s in ("sent", "acknowledged", "succeeded", "failed")}
    report_result(device.pk, commands["acknowledged"], "acknowledged")
    report_result(device.pk, commands["succeeded"], "succeeded", {"ok": True})
    report_result(device.pk, commands["failed"], "failed", {"error": "valve stuck"})
    commands["queued"] = create_command(device.pk, "do-queued").pk
    raise_alert(device.pk, "offline", "silent for too long")
    clear_alert(device.pk, "offline")
    raise_alert(device.pk, "offline", "silent again")
    acknowledged, _ = raise_alert(device.pk, "max:t", "too hot", metric="t", value=99.0)
    acknowledge_alert(device.pk, acknowledged.pk, user_id=None)
    return PopulatedDevice(device, imported, staged, staged_readings, commands)


def device_rows(alias: str, device_id: int) -> dict[str, list[tuple]]:
    """Every row of the device on one shard, per table, in primary-key order."""
    rows = {}
    with connections[alias].cursor() as cursor:
        for table in device_tables():
            cursor.execute(
                f"SELECT {table.column_list} FROM {table.name} WHERE device_id = %s"
                f" ORDER BY {table.key_list}",
                [device_id],
            )
            rows[table.name] = cursor.fetchall()
    return rows


def row_counts(alias: str, device_id: int) -> dict[str, int]:
    return {table: len(rows) for table, rows in device_rows(alias, device_id).items()}


def total_rows(alias: str, device_id: int) -> int:
    return sum(row_counts(alias, device_id).values())


def fence_of(alias: str, device_id: int) -> tuple[str, int] | None:
    """(state, epoch) of the device's fence row on a shard, or None when there is none."""
    return (
        DeviceFence.objects.on_shard(alias)
        .filter(device_id=device_id)
        .values_list("state", "epoch")
        .first()
    )


def fence_states(aliases: list[str], device_id: int) -> dict[str, str | None]:
    return {alias: (fence_of(alias, device_id) or (None,))[0] for alias in aliases}


def mover_waits_for_a_lock(alias: str) -> bool:
    """True while a mover's connection to this shard's database waits for a row lock."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'fleet-mover' AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


class Background(threading.Thread):
    """Runs `target` in a thread with its own Django connections; keeps its result or error."""

    def __init__(self, target: Callable[[], Any], name: str = "background") -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.result: Any = None
        self.error: BaseException | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None

    def run(self) -> None:
        self.started_at = time.monotonic()
        try:
            self.result = self._target_fn()
        except BaseException as exc:  # handed to the test through .outcome()
            self.error = exc
        finally:
            self.finished_at = time.monotonic()
            connections.close_all()

    def outcome(self, timeout: float = WAIT_TIMEOUT) -> Any:
        """Wait for the thread; its result, or its exception raised here."""
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} still running after {timeout}s"
        if self.error is not None:
            raise self.error
        return self.result


def manage(
    *args: str, extra_env: dict[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run `manage.py ARGS` as a separate process against the test databases."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=local_cluster.REPO_ROOT,
        env={**child_process_env(), **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
