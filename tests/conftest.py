"""Fixtures for tests against the real local PostgreSQL cluster (directory + two shards).

Django's test databases are created once per session for the directory and
the two shard instances (`test_` databases beside the local cluster's own).
Tests do not run inside Django's TestCase wrappers: those refuse connections
to any alias registered after the test began, which is exactly what run-time
shard registration does. Instead, `shards` registers the test shards in the
directory (as `manage.py add_shard` does), empties the caches, and after
the test truncates every table, so data is committed and visible to worker
threads and other processes, as in production.
"""

import time
from collections.abc import Iterator
from contextlib import closing

import psycopg2
import pytest
from django.core.cache import caches
from django.core.management.color import no_style
from django.db import OperationalError, connections
from django.test import Client

from core import local_cluster
from core.models import Shard, User
from routers.registry import (
    connection_settings_for,
    refresh_registry,
    register_shard_connection,
    unregister_shard_connection,
)
from shards.registration import ShardLocation, register_shard

TEST_SHARDS = sorted(local_cluster.SHARDS)
TRUNCATE_ATTEMPTS = 5
# Written by migrations, not by tests: truncating them would only force re-creation.
STATIC_TABLES = {"django_migrations", "django_content_type", "auth_permission"}


def on_server(alias: str, statement: str) -> None:
    """Run one statement outside any database (DROP/CREATE DATABASE) on `alias`'s server."""
    admin = connections[alias].get_connection_params()
    admin.pop("cursor_factory", None)
    admin["dbname"] = "postgres"
    with closing(psycopg2.connect(**admin)) as connection:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(statement)


def drop_test_databases(aliases: set[str]) -> None:
    """Drop the test databases WITH (FORCE): the pooler in front of each server may still
    hold idle server connections to them, which would make a plain DROP DATABASE fail
    (Django's own teardown, or its re-creation after an interrupted run)."""
    for alias in aliases:
        name = connections.settings[alias]["TEST"]["NAME"]
        on_server(alias, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def django_db_setup(django_test_environment, django_db_blocker):
    from django.test.utils import setup_databases

    aliases = {"default", *TEST_SHARDS}
    with django_db_blocker.unblock():
        drop_test_databases(aliases)
        setup_databases(verbosity=0, interactive=False, aliases=aliases, serialized_aliases=set())
    yield
    with django_db_blocker.unblock():
        connections.close_all()
        drop_test_databases(aliases)


def location_of(alias: str) -> ShardLocation:
    config = connections.settings[alias]
    return ShardLocation(host=config["HOST"], port=int(config["PORT"]), db_name=config["NAME"])


def truncate_all(aliases: list[str]) -> None:
    """Empty every table. The session's Celery worker may still run a task a test left
    behind (an import retried after a move, say): a deadlock with it is retried."""
    for alias in aliases:
        connection = connections[alias]
        tables = [
            table
            for table in connection.introspection.django_table_names(only_existing=True)
            if table not in STATIC_TABLES
        ]
        statements = connection.ops.sql_flush(no_style(), tables, allow_cascade=True)
        for attempt in range(TRUNCATE_ATTEMPTS):
            try:
                connection.ops.execute_sql_flush(statements)
                break
            except OperationalError as exc:
                if "deadlock" not in str(exc) or attempt == TRUNCATE_ATTEMPTS - 1:
                    raise
                time.sleep(0.5)


@pytest.fixture
def shards(django_db_setup, django_db_blocker) -> list[str]:
    """The test shards, registered and stamped; caches empty; all tables emptied afterwards."""
    with django_db_blocker.unblock():
        for alias in TEST_SHARDS:
            register_shard(alias, location_of(alias), migrate=False)
        refresh_registry(force=True)
        caches["default"].clear()
        caches["local"].clear()
        try:
            yield TEST_SHARDS
        finally:
            truncate_all(["default", *TEST_SHARDS])


@pytest.fixture
def root_client(shards) -> Client:
    """A Django test client logged in as a superuser (every permission)."""
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="pw-root"))
    return client


THIRD_SHARD = "shard_3"


@pytest.fixture(scope="session")
def third_shard_location(django_db_setup, django_db_blocker) -> Iterator[ShardLocation]:
    """A third shard database for move and rebalance tests, on shard_1's server.

    A shard is a database, so a second one on an existing server is a real shard;
    tests that need a server of their own start one (test_runtime_shard).
    """
    first = location_of(TEST_SHARDS[0])
    name = f"{first.db_name}_3"
    on_server(TEST_SHARDS[0], f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    on_server(TEST_SHARDS[0], f'CREATE DATABASE "{name}"')
    yield ShardLocation(host=first.host, port=first.port, db_name=name)
    with django_db_blocker.unblock():
        unregister_shard_connection(THIRD_SHARD)
        on_server(TEST_SHARDS[0], f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def three_shards(shards, third_shard_location, django_db_blocker) -> Iterator[list[str]]:
    """The two test shards plus a third, registered (and migrated the first time)."""
    with django_db_blocker.unblock():
        register_shard(THIRD_SHARD, third_shard_location)
        try:
            yield [*shards, THIRD_SHARD]
        finally:
            # A test that retired shard_3 made this process drop its alias: re-add it.
            location = Shard(
                alias=THIRD_SHARD,
                host=third_shard_location.host,
                port=third_shard_location.port,
                db_name=third_shard_location.db_name,
            )
            register_shard_connection(THIRD_SHARD, connection_settings_for(location))
            truncate_all([THIRD_SHARD])


@pytest.fixture
def dead_shard(shards) -> str:
    """A registered shard whose server does not exist (port 1): always unreachable."""
    Shard.objects.create(alias="shard_dead", number=99, host="127.0.0.1", port=1, db_name="x")
    refresh_registry(force=True)
    yield "shard_dead"
    unregister_shard_connection("shard_dead")


from tests.other_node import other_node  # noqa: E402, F401
from tests.worker import celery_worker  # noqa: E402, F401
