"""Raw connections to shards and COPY streamed from one PostgreSQL server to another.

A move copies with COPY in binary format, piped through this process without
staging whole tables in memory: one thread reads the source's COPY TO STDOUT
into a pipe while the caller feeds the pipe to the target's COPY FROM STDIN.
Raw psycopg2 connections (built from Django's settings for the alias) because
Django's connections are per thread and have no COPY API.
"""

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2

from routers.registry import own_connection_params

PIPE_CHUNK = 256 * 1024
# Shown in pg_stat_activity; a connection parameter, so no SET is needed (the pooler
# hands each transaction to any server connection: session settings would not follow).
APPLICATION_NAME = "fleet-mover"


def raw_connection(alias: str) -> Any:
    """A new psycopg2 connection to a shard, in a transaction-per-call mode."""
    return psycopg2.connect(**own_connection_params(alias), application_name=APPLICATION_NAME)


def roll_back(connection: Any) -> None:
    """Roll back what `connection` has open, unless the server already dropped it (its
    transaction died with it), so the error that dropped it is the one reported."""
    if not connection.closed:
        connection.rollback()


@contextmanager
def raw_connections(*aliases: str) -> Iterator[list[Any]]:
    """Raw connections to several shards, closed (rolling back anything open) on exit."""
    opened: list[Any] = []
    try:
        for alias in aliases:
            opened.append(raw_connection(alias))
        yield opened
    finally:
        for connection in opened:
            connection.close()


def pipe_copy(source_cursor: Any, select_sql: str, target_cursor: Any, target_table: str) -> None:
    """COPY the rows of `select_sql` (already bound) on the source into `target_table`.

    If either side fails the other is stopped and the first error is raised;
    the caller's target transaction must then be rolled back.
    """
    read_fd, write_fd = os.pipe()
    failures: list[BaseException] = []

    def produce() -> None:
        try:
            with os.fdopen(write_fd, "wb", buffering=PIPE_CHUNK) as sink:
                source_cursor.copy_expert(
                    f"COPY ({select_sql}) TO STDOUT (FORMAT binary)", sink, size=PIPE_CHUNK
                )
        except BaseException as exc:  # handed to the caller's thread below
            failures.append(exc)

    producer = threading.Thread(target=produce, name="copy-out", daemon=True)
    producer.start()
    consumer_failure: BaseException | None = None
    try:
        with os.fdopen(read_fd, "rb", buffering=PIPE_CHUNK) as source:
            target_cursor.copy_expert(
                f"COPY {target_table} FROM STDIN (FORMAT binary)", source, size=PIPE_CHUNK
            )
    except BaseException as exc:  # re-raised below, after the producer stopped
        consumer_failure = exc
    producer.join()
    if failures:
        # The source's error is the cause; the target only saw a cut-off stream.
        raise failures[0] from consumer_failure
    if consumer_failure is not None:
        raise consumer_failure
