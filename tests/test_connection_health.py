"""The connection health check (core/postgres): no round trip for a healthy connection,
and a connection the server closed is still replaced before a request's first query."""

import select
from contextlib import closing

import psycopg2
from django.db import close_old_connections, connections

from tests.waiting import wait_until


def backend_pid(alias: str) -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def on_the_same_server(alias: str, sql: str, params: list) -> object:
    """One statement from a connection of its own to `alias`'s server."""
    params_of = connections[alias].get_connection_params()
    with closing(psycopg2.connect(**params_of)) as other:
        other.autocommit = True
        with other.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()[0]


def test_a_healthy_connection_is_checked_without_a_query(shards):
    connection = connections["shard_1"]
    pid = backend_pid("shard_1")

    assert connection.is_usable() is True

    last = on_the_same_server("shard_1", "SELECT query FROM pg_stat_activity WHERE pid = %s", [pid])
    assert last == "SELECT pg_backend_pid()"  # not Django's SELECT 1


def test_a_connection_the_server_closed_is_replaced_before_the_next_query(shards):
    connection = connections["shard_1"]
    pid = backend_pid("shard_1")
    assert not connection.in_atomic_block

    assert on_the_same_server("shard_1", "SELECT pg_terminate_backend(%s)", [pid]) is True
    wait_until(
        lambda: select.select([connection.connection], [], [], 0)[0],
        what="the server's word that it closed the session",
    )
    assert connection.is_usable() is False

    close_old_connections()  # what the start of each request (and task) does
    assert backend_pid("shard_1") != pid
