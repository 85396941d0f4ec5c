"""Per-shard figures for the shards and cluster pages, gathered from every shard in parallel.

One connection and a few cheap catalogue queries per shard: the round trip of a
`SELECT 1` (latency), pg_database_size, the planner's row estimates of the shard
tables (pg_class.reltuples, current as of the last ANALYZE, never a count(*)
over readings), and the import lag: staged uploads and the oldest one's age
(through the partial index on staged uploads); and the pool PgBouncer keeps for it.
"""

import time
from dataclasses import dataclass
from datetime import datetime

import psycopg2
from django.db import connections
from django.utils import timezone

from core.pooler import PoolFigures
from core.replication import Replication, read_replication
from routers.fanout import fan_out
from routers.silos import shard_models
from shards.models import Upload
from shards.stats import pool_figures

_ROWS_SQL = """
SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND n.nspname = current_schema()
   AND c.relname = ANY(%s)
"""
_STAGED_SQL = (
    f"SELECT count(*), min(received_at) FROM {Upload._meta.db_table} WHERE status = 'staged'"
)


@dataclass
class ShardFigures:
    alias: str
    reachable: bool
    error: str = ""
    latency_ms: float | None = None
    size_bytes: int | None = None
    rows_estimate: int | None = None
    staged_uploads: int | None = None
    oldest_staged_at: datetime | None = None
    # The pooler in front of the shard (None: reached directly), or why it did not say.
    pool: PoolFigures | None = None
    pool_error: str = ""
    # The primary the shard's clients reach and its standbys (lag, synchronous or not).
    replication: Replication | None = None

    @property
    def oldest_staged_seconds(self) -> float | None:
        if self.oldest_staged_at is None:
            return None
        return max(0.0, (timezone.now() - self.oldest_staged_at).total_seconds())


def shard_tables() -> list[str]:
    return sorted(model._meta.db_table for model in shard_models())


def figures_on_shard(alias: str) -> ShardFigures:
    with connections[alias].cursor() as cursor:
        started = time.perf_counter()
        cursor.execute("SELECT 1")
        cursor.fetchone()
        latency_ms = (time.perf_counter() - started) * 1000
        cursor.execute("SELECT pg_database_size(current_database())")
        size = cursor.fetchone()[0]
        cursor.execute(_ROWS_SQL, [shard_tables()])
        rows = cursor.fetchone()[0]
        cursor.execute(_STAGED_SQL)
        staged, oldest = cursor.fetchone()
        replication = read_replication(cursor)
    figures = ShardFigures(alias, True, "", round(latency_ms, 2), size, rows, staged, oldest)
    figures.replication = replication
    try:
        figures.pool = pool_figures(alias)
    except psycopg2.Error as exc:
        figures.pool_error = describe_error(exc)
    return figures


def describe_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def all_figures(aliases: list[str]) -> dict[str, ShardFigures]:
    """Figures of each shard; one that cannot be asked is reachable=False with the reason."""
    answers = fan_out(figures_on_shard, aliases, return_exceptions=True)
    return {
        alias: answer
        if isinstance(answer, ShardFigures)
        else ShardFigures(alias, False, describe_error(answer))
        for alias, answer in answers.items()
    }
