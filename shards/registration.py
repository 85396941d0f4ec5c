"""Registering a shard database: connect, migrate, stamp its identity, list it in the registry.

Order matters: the registry row (which makes the shard eligible for new
devices) is written only after the database is reachable, migrated and
carries its number, so no process ever routes to a half-made shard.
`create_shard_database` can make the empty database first, on a server that exists.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg2
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import DatabaseError, connections, transaction
from django.db.models import Max
from psycopg2 import errors, sql

from core.models import Shard
from routers.aliases import DIRECTORY_ALIAS
from routers.registry import connection_settings_for, refresh_registry, register_shard_connection
from shards.fence import knows_any_device
from shards.ids import MAX_SHARD_NUMBER
from shards.models import ShardIdentity


class ShardRegistrationError(Exception):
    """Registration refused; the message says why and nothing was registered."""


@dataclass(frozen=True)
class ShardLocation:
    """Where a shard database is; empty user/password mean the cluster defaults."""

    host: str
    port: int
    db_name: str
    user: str = ""
    password: str = ""
    options: dict[str, Any] = field(default_factory=dict)


def _apply_location(shard: Shard, location: ShardLocation) -> None:
    shard.host = location.host
    shard.port = location.port
    shard.db_name = location.db_name
    shard.db_user = location.user
    shard.db_password = location.password
    shard.options = dict(location.options)


# The database every PostgreSQL server has, to connect to before ours exists.
MAINTENANCE_DB = "postgres"
CONNECT_TIMEOUT = 10


def _validate(shard: Shard) -> None:
    try:
        shard.full_clean(exclude=["number"], validate_unique=False)
    except ValidationError as exc:
        raise ShardRegistrationError("; ".join(exc.messages)) from exc
    twin = (
        Shard.objects.filter(host=shard.host, port=shard.port, db_name=shard.db_name)
        .exclude(alias=shard.alias)
        .first()
    )
    if twin is not None:
        raise ShardRegistrationError(
            f"{shard.host}:{shard.port}/{shard.db_name} is already registered as {twin.alias}"
        )


def stamp_identity(alias: str, number: int) -> None:
    """Record on the shard which registry number it carries (used in every id it mints)."""
    current = ShardIdentity.objects.on_shard(alias).filter(pk=1).first()
    taken = current is not None and current.number != number
    if taken and knows_any_device(alias):
        raise ShardRegistrationError(
            f"this database already holds devices as shard number {current.number}"
            f" ({current.alias}); refusing to give it number {number}"
        )
    ShardIdentity.objects.on_shard(alias).update_or_create(
        pk=1, defaults={"alias": alias, "number": number}
    )


def _next_number() -> int:
    """Numbers are never reused: retired shards keep theirs, so old ids stay unambiguous."""
    with connections[DIRECTORY_ALIAS].cursor() as cursor:
        cursor.execute(f"LOCK TABLE {Shard._meta.db_table} IN SHARE ROW EXCLUSIVE MODE")
    number = (Shard.objects.aggregate(top=Max("number"))["top"] or 0) + 1
    if number > MAX_SHARD_NUMBER:
        raise ShardRegistrationError(f"the id layout allows at most {MAX_SHARD_NUMBER} shards")
    return number


def check_registration(alias: str, location: ShardLocation, *, weight: int | None = None) -> Shard:
    """The registry row `register_shard` would save, unsaved; raises if it would refuse.

    Callers about to do something costly first (create the database) ask this, so a
    bad or retired alias is refused before anything is made.
    """
    existing = Shard.objects.filter(alias=alias).first()
    if existing is not None and existing.state == Shard.State.RETIRED:
        raise ShardRegistrationError(f"{alias} is retired; aliases are never reused")
    shard = existing or Shard(alias=alias, number=0)
    _apply_location(shard, location)
    if weight is not None:
        shard.weight = weight
    _validate(shard)
    return shard


def create_shard_database(location: ShardLocation) -> bool:
    """Create the location's database on its server unless it exists; True if created now.

    Connects to the server's `postgres` maintenance database with the location's login
    (or SHARD_DEFAULT_USER/PASSWORD), which must be allowed to create databases.
    """
    where = f"{location.host}:{location.port}"
    try:
        conn = psycopg2.connect(
            host=location.host,
            port=location.port,
            dbname=MAINTENANCE_DB,
            user=location.user or settings.SHARD_DEFAULT_USER,
            password=location.password or settings.SHARD_DEFAULT_PASSWORD,
            connect_timeout=CONNECT_TIMEOUT,
            **location.options,
        )
    except psycopg2.Error as exc:
        raise ShardRegistrationError(
            f"cannot connect to {where}/{MAINTENANCE_DB}: {exc}".strip()
        ) from exc
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [location.db_name])
            if cursor.fetchone() is not None:
                return False
            statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(location.db_name))
            try:
                cursor.execute(statement)
            except errors.DuplicateDatabase:
                return False  # made by someone else since we looked: just as good
    except psycopg2.Error as exc:
        raise ShardRegistrationError(
            f"cannot create database {location.db_name} on {where}: {exc}".strip()
        ) from exc
    finally:
        conn.close()
    return True


def register_shard(
    alias: str,
    location: ShardLocation,
    *,
    weight: int | None = None,
    migrate: bool = True,
    on_step: Callable[[str], None] | None = None,
) -> Shard:
    """Register (or update the location of) a shard; idempotent.

    `on_step` is told what is about to happen (connect, migrate, register), so a
    command can show progress through steps that may take a while.
    """

    def step(message: str) -> None:
        if on_step is not None:
            on_step(message)

    shard = check_registration(alias, location, weight=weight)
    new = shard._state.adding

    step(f"connecting to {location.host}:{location.port}/{location.db_name}")
    register_shard_connection(alias, connection_settings_for(shard))
    try:
        connections[alias].ensure_connection()
    except DatabaseError as exc:
        raise ShardRegistrationError(
            f"cannot connect to {location.host}:{location.port}/{location.db_name}: {exc}".strip()
        ) from exc
    if migrate:
        step(f"migrating {alias} (every shard migration)")
        call_command("migrate", database=alias, interactive=False, verbosity=0)

    step(f"stamping {alias} with its shard number and listing it in the registry")
    with transaction.atomic(using=DIRECTORY_ALIAS):
        if new:
            shard.number = _next_number()
        shard.save()
        stamp_identity(alias, shard.number)
    refresh_registry(force=True)
    return shard
