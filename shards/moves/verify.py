"""Checking a copy: per-table row counts and checksums on both shards, and what differs.

The checksum is the sum of a 64-bit hash of each row (hash_record_extended:
every column hashed by its type's extended hash, the stable kind hash
partitioning relies on), so it needs no sort and both servers compute it in
parallel. Only when a table disagrees are its keys fetched, to name the rows
that differ.
"""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from shards.moves.tables import DeviceTable

# Enough mismatching keys for an operator to investigate; the counts tell the rest.
MAX_REPORTED_KEYS = 20


@dataclass
class Verification:
    """Counts and checksums per table on each side, and the keys that differ."""

    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    mismatches: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(entry["ok"] for entry in self.tables.values())

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "tables": self.tables, "mismatches": self.mismatches}


def _checksums(connection: Any, device_id: int, tables: list[DeviceTable]) -> dict[str, tuple]:
    sums = {}
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(
                f"SELECT count(*), coalesce(sum(hash_record_extended(t, 0)::numeric), 0)::text"
                f" FROM {table.name} t WHERE t.device_id = %s",
                [device_id],
            )
            sums[table.name] = cursor.fetchone()
    connection.rollback()
    return sums


def _row_hashes(connection: Any, device_id: int, table: DeviceTable) -> dict[str, int]:
    keys = " || '/' || ".join(f't."{column}"::text' for column in table.key_columns)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {keys}, hash_record_extended(t, 0) FROM {table.name} t WHERE t.device_id = %s",
            [device_id],
        )
        rows = dict(cursor.fetchall())
    connection.rollback()
    return rows


def _differences(table: DeviceTable, source: dict[str, int], target: dict[str, int]) -> list:
    found = []
    for key in sorted(source.keys() | target.keys()):
        if key not in target:
            problem = "missing on target"
        elif key not in source:
            problem = "only on target"
        elif source[key] != target[key]:
            problem = "differs"
        else:
            continue
        found.append({"table": table.name, "key": key, "problem": problem})
    return found


def verify_copy(
    source: Any, target: Any, device_id: int, tables: list[DeviceTable]
) -> Verification:
    """Compare the device's rows on both shards; name up to MAX_REPORTED_KEYS differences."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="verify") as pool:
        on_source = pool.submit(_checksums, source, device_id, tables)
        on_target = pool.submit(_checksums, target, device_id, tables)
        source_sums, target_sums = on_source.result(), on_target.result()
    result = Verification()
    for table in tables:
        (source_count, source_sum), (target_count, target_sum) = (
            source_sums[table.name],
            target_sums[table.name],
        )
        result.tables[table.name] = {
            "rows": source_count,
            "target_rows": target_count,
            "ok": source_count == target_count and source_sum == target_sum,
        }
        if not result.tables[table.name]["ok"] and len(result.mismatches) < MAX_REPORTED_KEYS:
            diffs = _differences(
                table,
                _row_hashes(source, device_id, table),
                _row_hashes(target, device_id, table),
            )
            result.mismatches.extend(diffs[: MAX_REPORTED_KEYS - len(result.mismatches)])
    return result
