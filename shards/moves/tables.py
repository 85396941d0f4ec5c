"""The shard tables that hold a device's rows, found from the models so new ones move too."""

from dataclasses import dataclass

from django.db import connections

from routers.aliases import DIRECTORY_ALIAS
from routers.silos import shard_models


@dataclass(frozen=True)
class DeviceTable:
    """One table with a `device_id` column: what a move copies, verifies and cleans up."""

    name: str
    columns: tuple[str, ...]
    key_columns: tuple[str, ...]
    key_types: tuple[str, ...]  # SQL types of the key columns, for typed key lookups

    @property
    def column_list(self) -> str:
        return ", ".join(f'"{column}"' for column in self.columns)

    @property
    def key_list(self) -> str:
        return ", ".join(f'"{column}"' for column in self.key_columns)

    @property
    def upsert_action(self) -> str:
        """What an arriving row does to a copy already there: the source row wins."""
        others = [column for column in self.columns if column not in self.key_columns]
        if not others:
            return "DO NOTHING"
        assignments = ", ".join(f'"{column}" = excluded."{column}"' for column in others)
        return f"DO UPDATE SET {assignments}"


def device_tables() -> list[DeviceTable]:
    """Every concrete shard model with a device_id column, except the fence itself.

    The fence is the move's own bookkeeping: each shard keeps its own row.
    """
    tables = []
    for model in shard_models():
        meta = model._meta
        if not model.moves_with_device or model.per_shard or not meta.managed or meta.proxy:
            continue
        columns = tuple(field.column for field in meta.concrete_fields)
        keys = tuple(field.column for field in meta.pk_fields)
        # Every shard is PostgreSQL, as the directory is: its column types are theirs.
        types = tuple(field.db_type(connections[DIRECTORY_ALIAS]) for field in meta.pk_fields)
        tables.append(DeviceTable(meta.db_table, columns, keys, types))
    return sorted(tables, key=lambda table: table.name)
