"""Copying one device's rows from its shard to another: a bulk pass, then the remainder.

The bulk pass reads every table in one REPEATABLE READ snapshot of the source
while writers go on, and remembers that snapshot. The remainder pass, run once
the source is fenced, copies only rows written after it: rows whose creating
transaction (xmin) the snapshot did not see. Updates make new row versions
with new xmins, so changed rows come along too; deletes cannot happen while a
move copies (the fence refuses them). On the target every copy lands in a
temporary table first and is upserted by primary key, so any pass can run
again after a crash without doubling a row.
"""

from typing import Any

from psycopg2 import extensions

from shards.moves.streams import pipe_copy
from shards.moves.tables import DeviceTable

# The xid8 of a row's 32-bit xmin, taking the epoch from the current snapshot's
# xmax (rows are at most one wraparound old relative to it, for the recent rows
# this is used for); pg_visible_in_snapshot() then tells whether the remembered
# snapshot saw the row. Xids 0-2 are special (bootstrap/frozen): old rows, seen.
_XMIN_AS_XID8 = """
    ((((cur.xmax8 >> 32) - CASE WHEN t.xmin::text::bigint > (cur.xmax8 & 4294967295)
                               THEN 1 ELSE 0 END) << 32)
     | t.xmin::text::bigint)::text::xid8
"""
_CURRENT_XMAX = "(SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax8) cur"


def select_device_rows(table: DeviceTable, since_snapshot: str | None) -> str:
    """The SELECT that reads a device's rows (all, or those the snapshot did not see)."""
    query = f"SELECT {_qualified(table)} FROM {table.name} t"
    if since_snapshot is None:
        return query + " WHERE t.device_id = %(device_id)s"
    return (
        query + f", {_CURRENT_XMAX} WHERE t.device_id = %(device_id)s"
        " AND t.xmin::text::bigint > 2"
        f" AND NOT pg_visible_in_snapshot({_XMIN_AS_XID8}, %(snapshot)s::pg_snapshot)"
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
    copied: dict[str, int] = {}
    try:
        with source.cursor() as source_cursor, target.cursor() as target_cursor:
            source_cursor.execute("SELECT pg_current_snapshot()::text")
            snapshot = source_cursor.fetchone()[0]
            params = {"device_id": device_id, "snapshot": since_snapshot}
            for table in tables:
                select = source_cursor.mogrify(select_device_rows(table, since_snapshot), params)
                stage = f"move_stage_{table.name}"
                target_cursor.execute(
                    f"CREATE TEMP TABLE {stage} (LIKE {table.name}) ON COMMIT DROP"
                )
                pipe_copy(source_cursor, select.decode(), target_cursor, stage)
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


def delete_device_rows(cursor: Any, device_id: int, tables: list[DeviceTable]) -> dict[str, int]:
    """Remove a device's rows from every table (inside the caller's transaction)."""
    removed = {}
    for table in tables:
        cursor.execute(f"DELETE FROM {table.name} WHERE device_id = %s", [device_id])
        removed[table.name] = cursor.rowcount
    return removed
