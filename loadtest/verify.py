"""After a load run: every reading the devices were told was safe is stored, exactly once.

    python loadtest/verify.py var/loadtest/<run>/         # the ledger-*.json of a run

Reads the ledgers the locust processes wrote (per device: the batches acknowledged
and any never answered), the device-to-shard map from the directory and the stored
uploads and readings from every shard, with psycopg2 and the addresses in
var/cluster.json (an outside check: no project code). It waits until the run's
uploads are imported, then per device:

- stored readings on the device's shard == readings acknowledged (plus the readings of
  unanswered batches the server did store: the device never heard back, but a device
  resending them would get the same answer, so they count once);
- no upload row for a batch the device never sent, and no batch stored twice;
- none of the device's readings on any other shard (a move's leftovers would double).

Exit status 0 when every device passes; the report is printed as JSON.
"""

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
DB_USER = os.environ.get("LOADTEST_DB_USER", "fleet")
DB_PASSWORD = os.environ.get("LOADTEST_DB_PASSWORD", "fleet-local")


@dataclass
class Ledger:
    """What the load generator's devices were told, merged over its processes."""

    acknowledged: dict[int, dict[str, int]] = field(default_factory=dict)
    unanswered: dict[int, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def read(cls, directory: Path) -> "Ledger":
        ledger = cls()
        files = sorted(directory.glob("ledger-*.json"))
        if not files:
            raise FileNotFoundError(f"no ledger-*.json in {directory}")
        for path in files:
            for device_id, record in json.loads(path.read_text())["devices"].items():
                ledger.acknowledged[int(device_id)] = record["acknowledged"]
                ledger.unanswered[int(device_id)] = record.get("unanswered", {})
        return ledger


@dataclass
class DeviceCheck:
    device_id: int
    shard: str | None
    acknowledged: int
    stored: int
    expected: int
    elsewhere: dict[str, int]
    unknown_batches: list[str]
    problems: list[str]


@dataclass
class Report:
    devices: int = 0
    acknowledged: int = 0
    stored: int = 0
    failed: list[DeviceCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and self.devices > 0


@contextmanager
def connect(entry: dict) -> Iterator:
    conn = psycopg2.connect(
        host=entry["host"], port=entry["port"], dbname=entry["db"],
        user=DB_USER, password=DB_PASSWORD, connect_timeout=5,
    )  # fmt: skip
    try:
        conn.autocommit = True
        yield conn
    finally:
        conn.close()


def query(entry: dict, sql: str, params: list | None = None) -> list[tuple]:
    with connect(entry) as conn, closing(conn.cursor()) as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def placements(info: dict, device_ids: list[int]) -> dict[int, str]:
    rows = query(
        info["directory"],
        "SELECT device_id, shard_id FROM core_placement WHERE device_id = ANY(%s)",
        [device_ids],
    )
    return dict(rows)


def wait_imported(info: dict, device_ids: list[int], timeout: float) -> int:
    """Seconds until none of these devices' uploads is still staged; staged count if not."""
    deadline = time.monotonic() + timeout
    while True:
        staged = sum(
            query(
                shard,
                "SELECT count(*) FROM shards_upload WHERE status = 'staged'"
                " AND device_id = ANY(%s)",
                [device_ids],
            )[0][0]
            for shard in info["shards"].values()
        )
        if staged == 0 or time.monotonic() > deadline:
            return staged
        time.sleep(0.5)


def verify(info: dict, ledger: Ledger, wait: float = 120.0) -> Report:
    """Compare the ledger with what the databases hold; see the module docstring."""
    device_ids = sorted(ledger.acknowledged)
    report = Report(devices=len(device_ids))
    if not device_ids:
        return report
    staged = wait_imported(info, device_ids, wait)
    home = placements(info, device_ids)
    readings: dict[str, dict[int, int]] = {}
    uploads: dict[str, dict[int, list[tuple[str, int]]]] = {}
    for alias, shard in info["shards"].items():
        readings[alias] = dict(
            query(
                shard,
                "SELECT device_id, count(*) FROM shards_reading WHERE device_id = ANY(%s)"
                " GROUP BY device_id",
                [device_ids],
            )
        )
        uploads[alias] = {}
        for device_id, batch_id, count in query(
            shard,
            "SELECT device_id, batch_id, reading_count FROM shards_upload"
            " WHERE device_id = ANY(%s)",
            [device_ids],
        ):
            uploads[alias].setdefault(device_id, []).append((batch_id, count))
    for device_id in device_ids:
        acknowledged = ledger.acknowledged[device_id]
        unanswered = ledger.unanswered.get(device_id, {})
        shard = home.get(device_id)
        problems = []
        stored_batches = uploads.get(shard, {}).get(device_id, []) if shard else []
        names = [batch for batch, _ in stored_batches]
        doubled = sorted({b for b in names if names.count(b) > 1})
        unknown = sorted(set(names) - set(acknowledged) - set(unanswered))
        missing = sorted(set(acknowledged) - set(names))
        landed = {b for b in names if b in unanswered}
        expected = sum(acknowledged.values()) + sum(unanswered[b] for b in landed)
        stored = readings.get(shard, {}).get(device_id, 0) if shard else 0
        elsewhere = {
            alias: counts[device_id]
            for alias, counts in readings.items()
            if alias != shard and counts.get(device_id)
        }
        if shard is None:
            problems.append("no placement in the directory")
        if stored != expected:
            problems.append(f"stored {stored} readings, expected {expected}")
        if missing:
            problems.append(f"acknowledged batches with no upload row: {missing[:5]}")
        if doubled:
            problems.append(f"batches stored twice: {doubled[:5]}")
        if unknown:
            problems.append(f"upload rows for batches never sent: {unknown[:5]}")
        if elsewhere:
            problems.append(f"readings on other shards too: {elsewhere}")
        report.acknowledged += sum(acknowledged.values())
        report.stored += stored
        if problems:
            report.failed.append(
                DeviceCheck(
                    device_id, shard, sum(acknowledged.values()), stored, expected,
                    elsewhere, unknown, problems,
                )
            )  # fmt: skip
    if staged:
        for check in report.failed:
            check.problems.append(f"{staged} uploads of the run still staged after {wait:.0f}s")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="Directory with the run's ledger-*.json.")
    parser.add_argument(
        "--cluster-json",
        type=Path,
        default=Path(os.environ.get("LOADTEST_CLUSTER_JSON", ROOT / "var" / "cluster.json")),
    )
    parser.add_argument("--wait", type=float, default=120.0, help="Seconds to wait for imports.")
    args = parser.parse_args()
    info = json.loads(args.cluster_json.read_text())
    report = verify(info, Ledger.read(args.run_dir), args.wait)
    summary = {
        "ok": report.ok,
        "devices": report.devices,
        "acknowledged": report.acknowledged,
        "stored": report.stored,
        "failed": [asdict(check) for check in report.failed],
    }
    print(json.dumps(summary, indent=1))
    (args.run_dir / "verify.json").write_text(json.dumps(summary, indent=1))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
