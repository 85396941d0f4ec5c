"""The rows a move must copy again: the keys of rows changed while a device is being copied.

A move's bulk copy reads one snapshot of the source while writes go on. Whatever
changed after it must be copied again inside the fenced window, where writers wait,
so finding it must cost what changed, not what the device holds. Every device table
has two statement triggers (AFTER INSERT and AFTER UPDATE, with the statement's new
rows as a transition table) that log the primary keys of changed rows of devices
registered in MoveCapture into MoveChange, with the writing transaction's id. While
no device is being moved the triggers find MoveCapture empty and do nothing more
(one EXISTS on an empty table per statement, nothing per row).

Transactions commit out of order, so a pass cannot trust "everything up to the
newest log entry": an older entry may still be uncommitted. A pass reads in one
snapshot and remembers its horizon (the oldest transaction still running then);
every entry of a transaction before the horizon was visible to it and was copied,
so the next pass takes the entries of transactions from that horizon on.

The move registers the device in the same source transaction that sets its fence to
'copying'; that UPDATE waits for every writer holding the fence, and every later
statement sees the registration, so no change after the bulk snapshot goes
unlogged. Deletes are not logged: nothing deletes a device's rows while it is copied
(the fence sends deleters to wait). The registration and the log go when the move
releases its writers or rolls back.

`install_capture` (run by the migration that created the log, and after every
migration of a shard, so tables added later get the triggers too) is idempotent;
`tables_without_capture` is what a move checks before it starts.
"""

from typing import Any

from shards.models import MoveCapture, MoveChange
from shards.moves.tables import DeviceTable

CAPTURE_TABLE = MoveCapture._meta.db_table
CHANGE_TABLE = MoveChange._meta.db_table
FUNCTION = "fleet_capture_moving_rows"
TRIGGERS = {"INSERT": "fleet_capture_inserts", "UPDATE": "fleet_capture_updates"}
# The key columns arrive as the trigger's arguments (TG_ARGV).
FUNCTION_SQL = f"""
CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM {CAPTURE_TABLE}) THEN
        INSERT INTO {CHANGE_TABLE} (device_id, table_name, key, xact)
        SELECT changed.device_id, TG_TABLE_NAME,
               (SELECT jsonb_object_agg(name, to_jsonb(changed) -> name)
                FROM unnest(TG_ARGV) AS name),
               pg_current_xact_id()::text::bigint
        FROM fleet_changed_rows changed
        WHERE changed.device_id IN (SELECT device_id FROM {CAPTURE_TABLE});
    END IF;
    RETURN NULL;
END
$$
"""


def install_capture(cursor: Any, tables: list[DeviceTable]) -> None:
    """Create (or replace) the logging function and both triggers on every device table."""
    cursor.execute(FUNCTION_SQL)
    for table in tables:
        arguments = ", ".join(f"'{column}'" for column in table.key_columns)
        for event, trigger in TRIGGERS.items():
            cursor.execute(
                f"CREATE OR REPLACE TRIGGER {trigger} AFTER {event} ON {table.name}"
                " REFERENCING NEW TABLE AS fleet_changed_rows FOR EACH STATEMENT"
                f" EXECUTE FUNCTION {FUNCTION}({arguments})"
            )


def install_capture_on(connection: Any) -> None:
    """install_capture for every device table that exists on this shard's connection.

    A migration (or a post_migrate) runs it; tables that a later migration adds are
    not there yet, and get their triggers after it.
    """
    from shards.moves.tables import device_tables

    existing = set(connection.introspection.table_names())
    with connection.cursor() as cursor:
        install_capture(cursor, [table for table in device_tables() if table.name in existing])


def tables_without_capture(cursor: Any, tables: list[DeviceTable]) -> list[str]:
    """Device tables lacking either trigger (a shard not migrated since they were added)."""
    cursor.execute(
        "SELECT c.relname, count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
        " WHERE t.tgname = ANY(%s) GROUP BY c.relname",
        [list(TRIGGERS.values())],
    )
    complete = {name for name, count in cursor.fetchall() if count == len(TRIGGERS)}
    return sorted(table.name for table in tables if table.name not in complete)


def start_capture(cursor: Any, device_id: int) -> None:
    """Log the device's changes from now on (a fresh log: the bulk copy has not begun)."""
    cursor.execute(f"DELETE FROM {CHANGE_TABLE} WHERE device_id = %s", [device_id])
    cursor.execute(
        f"INSERT INTO {CAPTURE_TABLE} (device_id, started_at) VALUES (%s, now())"
        " ON CONFLICT (device_id) DO NOTHING",
        [device_id],
    )


def stop_capture(cursor: Any, device_id: int) -> None:
    cursor.execute(f"DELETE FROM {CAPTURE_TABLE} WHERE device_id = %s", [device_id])
    cursor.execute(f"DELETE FROM {CHANGE_TABLE} WHERE device_id = %s", [device_id])


HORIZON_SQL = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"


def horizon(cursor: Any) -> int:
    """The oldest transaction still running for the cursor's snapshot: every change logged
    by an older transaction is visible to it (or was rolled back)."""
    cursor.execute(HORIZON_SQL)
    return cursor.fetchone()[0]


def changes_since(cursor: Any, device_id: int, since: int) -> int:
    """How many of the device's logged changes come from transactions from `since` on."""
    cursor.execute(
        f"SELECT count(*) FROM {CHANGE_TABLE} WHERE device_id = %s AND xact >= %s",
        [device_id, since],
    )
    return cursor.fetchone()[0]


def changed_rows_sql(table: DeviceTable, columns: str) -> str:
    """SELECT `columns` (of `t`) of the device's rows in `table` logged by transactions
    from the horizon `since` on.

    Parameters: device_id, since. The logged keys become typed values
    (jsonb_populate_record with the table's own row type) and are joined on the
    primary key, so the cost is that of the changes, not of the device's rows.
    """
    typed = ", ".join(f'k."{column}"' for column in table.key_columns)
    joined = " AND ".join(f't."{column}" = k."{column}"' for column in table.key_columns)
    return (
        f"SELECT {columns} FROM ("
        f"SELECT DISTINCT {typed} FROM {CHANGE_TABLE} c,"
        f" jsonb_populate_record(NULL::{table.name}, c.key) k"
        f" WHERE c.device_id = %(device_id)s AND c.table_name = '{table.name}'"
        " AND c.xact >= %(since)s"
        f") k JOIN {table.name} t ON {joined} AND t.device_id = %(device_id)s"
    )


def tables_with_changes(
    cursor: Any, device_id: int, since: int, tables: list[DeviceTable]
) -> list[tuple[DeviceTable, int]]:
    """The tables with changes logged from the horizon `since` on, and how many each."""
    cursor.execute(
        f"SELECT table_name, count(*) FROM {CHANGE_TABLE}"
        " WHERE device_id = %s AND xact >= %s GROUP BY table_name",
        [device_id, since],
    )
    counts = dict(cursor.fetchall())
    return [(table, counts[table.name]) for table in tables if table.name in counts]
