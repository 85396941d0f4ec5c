"""Copying one device's rows from its shard to another: a bulk pass, then the changes.

The bulk pass reads every table in one REPEATABLE READ snapshot of the source while
writers go on, and checksums what it read in that same snapshot, so the copy can be
verified before the source is fenced. Rows changed after the snapshot are logged by
key (shards.moves.capture); the change passes copy exactly those rows, by key, so
their cost is the changes', not the device's. On the target every pass that may meet
rows already there lands in a temporary table first and is upserted by primary key,
so any pass can run again after a crash without doubling a row.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from psycopg2 import extensions

from shards.moves.capture import HORIZON_SQL, changed_rows_sql, tables_with_changes
from shards.moves.streams import pipe_copy, roll_back
from shards.moves.tables import DeviceTable
from shards.moves.verify import Checksums, KeyHashes, changed_hashes, checksums

Copied = dict[str, int]
# A table that just received this many of the device's rows is analysed before the
# change passes: with the statistics of a table that looked empty, PostgreSQL plans the
# key lookups of the fenced window as sequential scans (minutes instead of milliseconds).
ANALYZE_AFTER_ROWS = 10_000
# A change pass carries up to this many logged changes of a table as one JSON value
# (_merge_few), more through a staged COPY (_merge).
FEW_ROWS = 1000
# The key lookups must use the primary keys whatever the statistics say.
PREFER_INDEXES = "SET LOCAL enable_seqscan = off"


def _qualified(table: DeviceTable) -> str:
    return ", ".join(f't."{column}"' for column in table.columns)


def _select_all_rows(table: DeviceTable) -> str:
    return f"SELECT {_qualified(table)} FROM {table.name} t WHERE t.device_id = %(device_id)s"


def _merge(source_cursor: Any, select: str, target_cursor: Any, table: DeviceTable) -> int:
    """COPY the rows of `select` into a stage table on the target, then upsert them."""
    stage = f"move_stage_{table.name}"
    target_cursor.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table.name}) ON COMMIT DROP"
    )
    # Named columns: a column added by a later migration sits last in the table (and in
    # LIKE's copy of it) but where its model puts it in the list.
    pipe_copy(source_cursor, select, target_cursor, f"{stage} ({table.column_list})")
    target_cursor.execute(
        f"INSERT INTO {table.name} ({table.column_list})"
        f" SELECT {table.column_list} FROM {stage}"
        f" ON CONFLICT ({table.key_list}) {table.upsert_action}"
    )
    merged = target_cursor.rowcount
    target_cursor.execute(f"TRUNCATE {stage}")
    return merged


def _merge_few(source_cursor: Any, select: str, target_cursor: Any, table: DeviceTable) -> int:
    """_merge for a few rows: carried as one JSON value instead of a staged COPY.

    Inside the fenced window a pass usually meets a handful of rows in a few tables;
    a temporary table and a COPY per table would cost more than the rows. The JSON
    keeps every value exactly (floats print their shortest exact form) and lands by
    column name in the target table's own row type.
    """
    source_cursor.execute(
        f"SELECT coalesce(jsonb_agg(to_jsonb(rows)), '[]')::text FROM ({select}) rows"
    )
    rows_json = source_cursor.fetchone()[0]
    target_cursor.execute(
        f"INSERT INTO {table.name} ({table.column_list})"
        f" SELECT {table.column_list} FROM jsonb_populate_recordset(NULL::{table.name}, %s::jsonb)"
        f" ON CONFLICT ({table.key_list}) {table.upsert_action}",
        [rows_json],
    )
    return target_cursor.rowcount


@contextmanager
def _source_snapshot(source: Any, target: Any) -> Iterator[None]:
    """The source reads in one REPEATABLE READ, READ ONLY snapshot, ended on the way out;
    the target's transaction is the caller's to commit and is rolled back on an error."""
    source.set_session(isolation_level=extensions.ISOLATION_LEVEL_REPEATABLE_READ, readonly=True)
    try:
        yield
    except BaseException:
        roll_back(target)
        raise
    finally:
        roll_back(source)
        if not source.closed:
            source.set_session(isolation_level=extensions.ISOLATION_LEVEL_DEFAULT, readonly=False)


def copy_device_rows(
    source: Any, target: Any, device_id: int, tables: list[DeviceTable]
) -> tuple[Copied, str, int, Checksums]:
    """The bulk pass: every row of the device, in one source snapshot.

    Returns (rows per table on the target, the snapshot read, its horizon, the
    source's checksums in that snapshot). Changes logged by transactions from the
    horizon on are for the change passes. The target's transaction commits only when
    every table arrived; the source's is read-only.
    """
    copied = dict.fromkeys((table.name for table in tables), 0)
    params = {"device_id": device_id}
    with _source_snapshot(source, target):
        with source.cursor() as source_cursor, target.cursor() as target_cursor:
            source_cursor.execute(f"SELECT pg_current_snapshot()::text, ({HORIZON_SQL})")
            snapshot, horizon = source_cursor.fetchone()
            for table in tables:
                select = source_cursor.mogrify(_select_all_rows(table), params).decode()
                if _has_rows(target_cursor, table, device_id):
                    copied[table.name] = _merge(source_cursor, select, target_cursor, table)
                    continue
                # The usual first pass: nothing to merge with, so COPY straight in.
                pipe_copy(
                    source_cursor, select, target_cursor, f"{table.name} ({table.column_list})"
                )
                target_cursor.execute(
                    f"SELECT count(*) FROM {table.name} WHERE device_id = %s", [device_id]
                )
                copied[table.name] = target_cursor.fetchone()[0]
            # The same snapshot the rows came from: what the target must now hold.
            source_sums = checksums(source_cursor, device_id, tables)
        target.commit()
        with target.cursor() as target_cursor:
            for table in tables:
                if copied[table.name] >= ANALYZE_AFTER_ROWS:
                    target_cursor.execute(f"ANALYZE {table.name}")
        target.commit()
    return copied, snapshot, horizon, source_sums


def copy_changed_rows(
    source: Any, target: Any, device_id: int, tables: list[DeviceTable], *, since: int
) -> tuple[Copied, int, KeyHashes]:
    """Copy, by key, the rows logged as changed by transactions from the horizon `since` on.

    Returns (rows upserted per table, this pass's horizon: the `since` of the next,
    the source's hash of every row copied). The source reads in one snapshot, so the
    horizon, the rows and their hashes agree.
    """
    params = {"device_id": device_id, "since": since}
    copied: Copied = {}
    hashes: KeyHashes = {}
    with _source_snapshot(source, target):
        with source.cursor() as source_cursor, target.cursor() as target_cursor:
            source_cursor.execute(HORIZON_SQL)  # the snapshot's first statement
            next_since = source_cursor.fetchone()[0]
            source_cursor.execute(PREFER_INDEXES)
            for table, logged in tables_with_changes(source_cursor, device_id, since, tables):
                select = changed_rows_sql(table, _qualified(table))
                select = source_cursor.mogrify(select, params).decode()
                merge = _merge_few if logged <= FEW_ROWS else _merge
                copied[table.name] = merge(source_cursor, select, target_cursor, table)
                hashes[table.name] = changed_hashes(source_cursor, table, params)
        target.commit()
    return copied, next_since, hashes


def _has_rows(cursor: Any, table: DeviceTable, device_id: int) -> bool:
    cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {table.name} WHERE device_id = %s)", [device_id])
    return cursor.fetchone()[0]


def delete_device_rows(cursor: Any, device_id: int, tables: list[DeviceTable]) -> dict[str, int]:
    """Remove a device's rows from every table (inside the caller's transaction)."""
    removed = {}
    for table in tables:
        cursor.execute(f"DELETE FROM {table.name} WHERE device_id = %s", [device_id])
        removed[table.name] = cursor.rowcount
    return removed
