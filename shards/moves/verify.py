"""Checking a copy: per-table row counts and checksums, and the keys that differ.

The checksum is the sum of a 64-bit hash of each row (hash_record_extended: every
column hashed by its type's extended hash, the stable kind hash partitioning relies
on), so it needs no sort. The bulk copy is checked before the source is fenced: the
source's sums come from the very snapshot the rows were read in, the target's from
what arrived. Each pass over the logged changes is checked the same way, key by key:
the source's row hashes from the snapshot the pass copied from, the target's from
what it upserted. So the fenced window checks only its own last few changes, and the
check costs what changed in that window, not what the device holds or what changed
during the whole move.
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shards.moves.capture import changed_rows_sql
from shards.moves.tables import DeviceTable

# Enough mismatching keys for an operator to investigate; the counts tell the rest.
MAX_REPORTED_KEYS = 20
Checksums = dict[str, tuple[int, str]]


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

    def add_differences(self, found: list[dict[str, str]]) -> None:
        room = MAX_REPORTED_KEYS - len(self.mismatches)
        self.mismatches.extend(found[: max(room, 0)])


def checksums(cursor: Any, device_id: int, tables: list[DeviceTable]) -> Checksums:
    """(rows, checksum) per table of the device's rows, as the cursor's snapshot sees them."""
    sums = {}
    for table in tables:
        cursor.execute(
            f"SELECT count(*), coalesce(sum(hash_record_extended(t, 0)::numeric), 0)::text"
            f" FROM {table.name} t WHERE t.device_id = %s",
            [device_id],
        )
        sums[table.name] = cursor.fetchone()
    return sums


def _text(value: Any) -> str:
    """A key column as text that does not depend on the session's time zone."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).isoformat()
    return str(value)


def _key_text(values: tuple) -> str:
    return "/".join(_text(value) for value in values)


def _row_hashes(connection: Any, device_id: int, table: DeviceTable) -> dict[str, int]:
    keys = ", ".join(f't."{column}"' for column in table.key_columns)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {keys}, hash_record_extended(t, 0) FROM {table.name} t WHERE t.device_id = %s",
            [device_id],
        )
        rows = {_key_text(row[:-1]): row[-1] for row in cursor.fetchall()}
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


def verify_bulk(
    source_sums: Checksums, source: Any, target: Any, device_id: int, tables: list[DeviceTable]
) -> Verification:
    """Compare the bulk copy on the target with the source's sums from its snapshot.

    Where a table differs its keys are compared with the source as it is now, so the
    report names the rows (rows changed since the snapshot may be named too).
    """
    with target.cursor() as cursor:
        target_sums = checksums(cursor, device_id, tables)
    target.rollback()
    result = Verification()
    for table in tables:
        (source_rows, source_sum), (target_rows, target_sum) = (
            source_sums[table.name],
            target_sums[table.name],
        )
        ok = source_rows == target_rows and source_sum == target_sum
        result.tables[table.name] = {"rows": source_rows, "target_rows": target_rows, "ok": ok}
        if not ok and len(result.mismatches) < MAX_REPORTED_KEYS:
            result.add_differences(
                _differences(
                    table,
                    _row_hashes(source, device_id, table),
                    _row_hashes(target, device_id, table),
                )
            )
    return result


KeyHashes = dict[str, dict[tuple, int]]


def changed_hashes(cursor: Any, table: DeviceTable, params: dict[str, Any]) -> dict[tuple, int]:
    """{key: row hash} of the table's rows logged as changed (changed_rows_sql's params)."""
    keys = ", ".join(f't."{column}"' for column in table.key_columns)
    cursor.execute(changed_rows_sql(table, f"{keys}, hash_record_extended(t, 0)"), params)
    return {tuple(row[:-1]): row[-1] for row in cursor.fetchall()}


def _hashes_of_keys(
    cursor: Any, table: DeviceTable, device_id: int, keys: list[tuple]
) -> dict[tuple, int]:
    """The target's row hashes for these keys, found by typed key lookups."""
    if not keys:
        return {}
    columns = ", ".join(f'"{column}"' for column in table.key_columns)
    selected = ", ".join(f't."{column}"' for column in table.key_columns)
    arrays = ", ".join(f"%s::{sql_type}[]" for sql_type in table.key_types)
    joined = " AND ".join(f't."{column}" = k."{column}"' for column in table.key_columns)
    cursor.execute(
        f"SELECT {selected}, hash_record_extended(t, 0) FROM unnest({arrays}) AS k({columns})"
        f" JOIN {table.name} t ON {joined} AND t.device_id = %s",
        [*[list(column) for column in zip(*keys, strict=True)], device_id],
    )
    return {tuple(row[:-1]): row[-1] for row in cursor.fetchall()}


def verify_changed_rows(
    source_hashes: KeyHashes, target: Any, device_id: int, tables: list[DeviceTable]
) -> Verification:
    """Compare the target's copies of one pass's changed rows with the source's hashes of
    them, taken in the snapshot the pass copied from."""
    result = Verification()
    by_name = {table.name: table for table in tables}
    with target.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # key lookups, whatever the statistics
        for name, on_source in source_hashes.items():
            on_target = _hashes_of_keys(cursor, by_name[name], device_id, list(on_source))
            differences = _differences(
                by_name[name],
                {_key_text(key): value for key, value in on_source.items()},
                {_key_text(key): value for key, value in on_target.items()},
            )
            result.tables[name] = {"changed_rows": len(on_source), "ok": not differences}
            result.add_differences(differences)
    target.rollback()
    return result
