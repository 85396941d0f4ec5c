"""Copying one device's rows from its shard to another: a bulk pass, then the remainder.

The bulk pass reads every table in one REPEATABLE READ snapshot of the source
while writers go on, and remembers that snapshot. The remainder pass, run once
the source is fenced, copies only rows written after it: rows whose creating
transaction (xmin) is not older than the snapshot's xmin. Updates make new row versions
with new xmins, so changed rows come along too; deletes cannot happen while a
move copies (the fence refuses them). On the target every copy lands in a
temporary table first and is upserted by primary key, so any pass can run
again after a crash without doubling a row.
"""

from typing import Any

from psycopg2 import extensions

from shards.moves.streams import pipe_copy
from shards.moves.tables import DeviceTable

# The xid8 of a row's 32-bit xmin, with the epoch taken from the reading
# transaction's own snapshot xmax (%(xmax8)s, fetched once): a row written after
# the remembered snapshot is at most one wraparound older than that.
# Xids 0-2 are special (bootstrap, frozen): old rows, always seen.
_XMIN_AS_XID8 = """
    ((((%(xmax8)s::bigint >> 32) - CASE WHEN t.xmin::text::bigint > (%(xmax8)s::bigint & 4294967295)
                                       THEN 1 ELSE 0 END) << 32)
     | t.xmin::text::bigint)::text::xid8
"""


def select_device_rows(table: DeviceTable, since_snapshot: str | None) -> str:
    """The SELECT that reads a device's rows (all, or those the snapshot may have missed).

    "May have missed": written by a transaction at or after the snapshot's xmin,
    not "not visible in the snapshot". A row written in a savepoint carries the
    subtransaction's xid, which the snapshot does not list as running, so
    pg_visible_in_snapshot() would call it seen although its transaction had not
    committed. Every such xid is above its parent's, and so at or above xmin.
    The few rows of transactions that committed before the snapshot but above
    its xmin come along too; the upsert makes that harmless.
    """
    query = f"SELECT {_qualified(table)} FROM {table.name} t WHERE t.device_id = %(device_id)s"
    if since_snapshot is None:
        return query
    return (
        query + " AND t.xmin::text::bigint > 2"
        f" AND {_XMIN_AS_XID8} >= pg_snapshot_xmin(%(snapshot)s::pg_snapshot)"
    )


def _qualified(table: DeviceTable) -> str:
    return ", ".join(f't."{column}"' for column in table.columns)


def copy_device_rows(
    source: Any,
    target: Any,
    device_id: int,
    tables: list[DeviceTable],
    *,
    since_snapshot: str | None = None,
) -> tuple[dict[str, int], str]:
    """Copy the device's rows (or those newer than `since_snapshot`) in one source snapshot.

    Returns (rows upserted per table, the snapshot read). The target's
    transaction commits only when every table arrived; the source's is read-only.
    """
    source.set_session(isolation_level=extensions.ISOLATION_LEVEL_REPEATABLE_READ, readonly=True)
    copied = dict.fromkeys((table.name for table in tables), 0)
    try:
        with source.cursor() as source_cursor, target.cursor() as target_cursor:
            source_cursor.execute(
                "SELECT pg_current_snapshot()::text,"
                " pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
            )
            snapshot, xmax8 = source_cursor.fetchone()
            params = {"device_id": device_id, "snapshot": since_snapshot, "xmax8": xmax8}
            if since_snapshot is not None:
                # The remainder is usually a few rows in one or two tables: find which
                # first, in one round trip, and leave the others alone.
                tables = _tables_with_rows(source_cursor, tables, since_snapshot, params)
            for table in tables:
                select = source_cursor.mogrify(select_device_rows(table, since_snapshot), params)
                if since_snapshot is None and not _has_rows(target_cursor, table, device_id):
                    # The usual bulk pass: nothing to merge with, so COPY straight in.
                    pipe_copy(
                        source_cursor,
                        select.decode(),
                        target_cursor,
                        f"{table.name} ({table.column_list})",
                    )
                    target_cursor.execute(
                        f"SELECT count(*) FROM {table.name} WHERE device_id = %s", [device_id]
                    )
                    copied[table.name] = target_cursor.fetchone()[0]
                    continue
                stage = f"move_stage_{table.name}"
                target_cursor.execute(
                    f"CREATE TEMP TABLE {stage} (LIKE {table.name}) ON COMMIT DROP"
                )
                # Named columns: a column added by a later migration sits last in the
                # table (and in LIKE's copy of it) but where its model puts it in the list.
                pipe_copy(
                    source_cursor, select.decode(), target_cursor, f"{stage} ({table.column_list})"
                )
                target_cursor.execute(
                    f"INSERT INTO {table.name} ({table.column_list})"
                    f" SELECT {table.column_list} FROM {stage}"
                    f" ON CONFLICT ({table.key_list}) {table.upsert_action}"
                )
                copied[table.name] = target_cursor.rowcount
        target.commit()
    except BaseException:
        target.rollback()
        raise
    finally:
        source.rollback()
        source.set_session(isolation_level=extensions.ISOLATION_LEVEL_DEFAULT, readonly=False)
    return copied, snapshot


def _has_rows(cursor: Any, table: DeviceTable, device_id: int) -> bool:
    cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {table.name} WHERE device_id = %s)", [device_id])
    return cursor.fetchone()[0]


def _tables_with_rows(
    cursor: Any, tables: list[DeviceTable], since_snapshot: str, params: dict[str, Any]
) -> list[DeviceTable]:
    counts = " UNION ALL ".join(
        f"SELECT {position}, count(*) FROM ({select_device_rows(table, since_snapshot)}) rows"
        for position, table in enumerate(tables)
    )
    cursor.execute(counts, params)
    return [tables[position] for position, count in cursor.fetchall() if count]


def delete_device_rows(cursor: Any, device_id: int, tables: list[DeviceTable]) -> dict[str, int]:
    """Remove a device's rows from every table (inside the caller's transaction)."""
    removed = {}
    for table in tables:
        cursor.execute(f"DELETE FROM {table.name} WHERE device_id = %s", [device_id])
        removed[table.name] = cursor.rowcount
    return removed
