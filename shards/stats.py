"""What a shard holds, gathered in parallel for status pages and commands."""

import time
from typing import Any

import psycopg2
from django.db import connections
from django.utils import timezone

from core.pooler import NoPooler, PoolFigures, read_pool
from core.replication import Replication, Standby, read_replication
from routers.fanout import fan_out
from routers.registry import own_connection_params
from shards.fence import HELD_DEVICES_SQL, held_devices
from shards.models import Command, Reading, Upload

# Only devices this shard holds count: a moved device's rows linger until cleanup.
_OWNED = f"device_id IN ({HELD_DEVICES_SQL})"
_COUNT_SQL = {
    "devices": f"SELECT count(*) FROM ({HELD_DEVICES_SQL}) held",
    "readings": f"SELECT count(*) FROM {Reading._meta.db_table} WHERE {_OWNED}",
    "uploads_staged": (
        f"SELECT count(*) FROM {Upload._meta.db_table} WHERE status = 'staged' AND {_OWNED}"
    ),
    "commands_pending": (
        f"SELECT count(*) FROM {Command._meta.db_table}"
        f" WHERE status IN ('queued', 'sent') AND {_OWNED}"
    ),
}


def shard_stats(alias: str) -> dict[str, Any]:
    """Row counts, size on disk and round-trip latency of one shard."""
    started = time.perf_counter()
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
        latency_ms = (time.perf_counter() - started) * 1000
        stats: dict[str, Any] = {"latency_ms": round(latency_ms, 2)}
        for name, sql in _COUNT_SQL.items():
            cursor.execute(sql)
            stats[name] = cursor.fetchone()[0]
        cursor.execute("SELECT pg_database_size(current_database())")
        stats["size_bytes"] = cursor.fetchone()[0]
    stats.update(pool_stats(alias))
    stats.update(replication_stats(alias))
    return stats


def replication_of(alias: str) -> Replication:
    """The primary that `alias` (the directory or a shard) reaches, and its standbys."""
    with connections[alias].cursor() as cursor:
        return read_replication(cursor)


def replication_stats(alias: str) -> dict[str, Any]:
    """{"replication": state}, or {"replication_error": why}."""
    try:
        return {"replication": replication_of(alias).as_json()}
    except Exception as exc:  # a status figure: say why it is missing, never fail the page
        return {"replication": None, "replication_error": str(exc).strip()[:300]}


def describe_replication(stats: dict[str, Any]) -> str:
    """`replication_stats` (or a dict holding its keys) in a few words."""
    if stats.get("replication_error"):
        return f"did not say: {stats['replication_error']}"
    state = stats.get("replication")
    if state is None:
        return "-"
    standbys = [Standby(**standby) for standby in state["standbys"]]
    return Replication(state["server"], state["in_recovery"], standbys).summary()


def pool_figures(alias: str) -> PoolFigures | None:
    """The pool in front of `alias` (the directory or a shard); None if reached directly."""
    try:
        return read_pool(own_connection_params(alias), connections[alias].settings_dict["NAME"])
    except NoPooler:
        return None


def pool_stats(alias: str) -> dict[str, Any]:
    """{"pool": figures or None}, or {"pool_error": why} when the console refuses us
    (a pooler whose stats_users leave out the app's login): the shard itself answered."""
    try:
        figures = pool_figures(alias)
    except psycopg2.Error as exc:
        return {"pool": None, "pool_error": str(exc).strip()}
    return {"pool": figures.as_json() if figures else None}


def all_shard_stats(aliases: list[str]) -> dict[str, dict[str, Any] | BaseException]:
    """Stats per shard; a shard that is down yields its exception instead of hiding the rest."""
    return fan_out(shard_stats, aliases, return_exceptions=True)


def import_lag_seconds(alias: str) -> float:
    """How long the oldest upload still waiting for its import has waited (0 when none).

    Only devices the shard owns count: the staged copy a moved device left behind
    (removed at cleanup) is never imported here. The oldest staged upload is the
    first entry of the partial index on staged uploads, so this stays cheap.
    """
    oldest = (
        Upload.objects.on_shard(alias)
        .filter(status=Upload.Status.STAGED)
        .filter(device_id__in=held_devices(alias))
        .order_by("received_at")
        .values_list("received_at", flat=True)
        .first()
    )
    return 0.0 if oldest is None else max(0.0, (timezone.now() - oldest).total_seconds())
