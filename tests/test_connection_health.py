"""The connection health check (core/postgres): no round trip for a healthy connection,
and a connection the server closed is still replaced before a request's first query.

Django's connections go to PgBouncer, which keeps server connections to itself: the
check is proven on an alias straight to shard_1's PostgreSQL (the backend is the same),
and the pooler's part (a server connection the database closed costs its client
nothing) on shard_1 as the app reaches it.
"""

import select
from collections.abc import Iterator
from contextlib import closing

import psycopg2
import pytest
from django.db import close_old_connections, connections

from core import local_cluster
from tests.waiting import wait_until

DIRECT = "shard_1_direct"


@pytest.fixture
def direct(shards) -> Iterator[str]:
    """An alias to shard_1's test database on its PostgreSQL server, not its pooler."""
    server_port = local_cluster.SHARDS["shard_1"][0]
    connections.settings[DIRECT] = {**connections.settings["shard_1"], "PORT": str(server_port)}
    try:
        yield DIRECT
    finally:
        connections[DIRECT].close()
        del connections[DIRECT]
        del connections.settings[DIRECT]


def backend_pid(alias: str) -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def on_the_same_server(alias: str, sql: str, params: list) -> object:
    """One statement from a connection of its own to `alias`'s server (not its pooler)."""
    params_of = connections[alias].get_connection_params()
    params_of["port"] = local_cluster.SHARDS["shard_1"][0]
    with closing(psycopg2.connect(**params_of)) as other:
        other.autocommit = True
        with other.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()[0]


def test_a_healthy_connection_is_checked_without_a_query(direct):
    connection = connections[direct]
    pid = backend_pid(direct)

    assert connection.is_usable() is True

    last = on_the_same_server(direct, "SELECT query FROM pg_stat_activity WHERE pid = %s", [pid])
    assert last == "SELECT pg_backend_pid()"  # not Django's SELECT 1


def test_a_connection_the_server_closed_is_replaced_before_the_next_query(direct):
    connection = connections[direct]
    pid = backend_pid(direct)
    assert not connection.in_atomic_block

    assert on_the_same_server(direct, "SELECT pg_terminate_backend(%s)", [pid]) is True
    wait_until(
        lambda: select.select([connection.connection], [], [], 0)[0],
        what="the server's word that it closed the session",
    )
    assert connection.is_usable() is False

    close_old_connections()  # what the start of each request (and task) does
    assert backend_pid(direct) != pid


def test_behind_the_pooler_a_server_connection_the_database_closed_costs_its_client_nothing(
    shards,
):
    connection = connections["shard_1"]
    pid = backend_pid("shard_1")  # the server connection PgBouncer lent for that query

    assert on_the_same_server("shard_1", "SELECT pg_terminate_backend(%s)", [pid]) is True
    wait_until(
        lambda: (
            not on_the_same_server(
                "shard_1", "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid]
            )
        ),
        what="the server connection to end",
    )

    assert connection.is_usable() is True  # the client's connection is to the pooler
    assert backend_pid("shard_1") != pid  # and its next query runs on another
