"""Cluster-wide 64-bit ids minted inside each shard database.

Layout (Instagram style): 41 bits of milliseconds since 2025-01-01 UTC, 13 bits
of the shard's number (from the registry, never reused) and 10 bits of a
per-shard sequence. Ids are unique across the cluster without coordination,
sort by creation time, and stay the same when a device moves to another shard.
The sign bit stays clear until 2059. The SQL function `fleet_next_id()` that
mints them is created by shards/migrations/0001_initial.py.
"""

from collections.abc import Iterable
from typing import Any

from django.db import connections, models
from django.db.models.expressions import DatabaseDefault

from shards.reads import FencedQuerySet

ID_EPOCH_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
SHARD_BITS = 13
SEQUENCE_BITS = 10
MAX_SHARD_NUMBER = (1 << SHARD_BITS) - 1


class NextClusterId(models.Func):
    """SQL expression `fleet_next_id()`, used as the database default of id columns."""

    function = "fleet_next_id"
    template = "%(function)s()"
    output_field = models.BigIntegerField()


def ClusterIdField(**kwargs: object) -> models.BigIntegerField:
    """A primary key filled in by the shard on insert and returned to Django."""
    return models.BigIntegerField(primary_key=True, db_default=NextClusterId(), **kwargs)


def shard_number_of(cluster_id: int) -> int:
    """The number of the shard that minted an id (not necessarily where it lives now)."""
    return (cluster_id >> SEQUENCE_BITS) & MAX_SHARD_NUMBER


def created_ms_of(cluster_id: int) -> int:
    """Unix time in milliseconds at which the id was minted."""
    return (cluster_id >> (SHARD_BITS + SEQUENCE_BITS)) + ID_EPOCH_MS


def mint_ids(alias: str, count: int) -> list[int]:
    """Draw `count` ids from a shard in one round trip."""
    if count <= 0:
        return []
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT fleet_next_id() FROM generate_series(1, %s)", [count])
        return [row[0] for row in cursor.fetchall()]


class ClusterIdQuerySet(FencedQuerySet):
    """Device rows' querysets whose bulk_create fills in cluster ids.

    Django 5.2's bulk_create() inserts a db_default primary key but does not
    read it back (objects keep a DatabaseDefault placeholder), so ids are
    minted first and assigned explicitly.
    """

    def bulk_create(self, objs: Iterable[models.Model], *args: Any, **kwargs: Any):
        objs = list(objs)
        unset = [obj for obj in objs if isinstance(obj.pk, DatabaseDefault)]
        for obj, new_id in zip(unset, mint_ids(self.db, len(unset)), strict=True):
            obj.pk = new_id
        return super().bulk_create(objs, *args, **kwargs)


ClusterIdManager = models.Manager.from_queryset(ClusterIdQuerySet)
