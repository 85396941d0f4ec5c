"""Registering a shard database: connect, migrate, stamp its identity, list it in the registry.

Order matters: the registry row (which makes the shard eligible for new
devices) is written only after the database is reachable, migrated and
carries its number, so no process ever routes to a half-made shard.
"""

from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import DatabaseError, connections, transaction
from django.db.models import Max

from core.models import Shard
from routers.aliases import DIRECTORY_ALIAS
from routers.registry import connection_settings_for, refresh_registry, register_shard_connection
from shards.ids import MAX_SHARD_NUMBER
from shards.models import DeviceFence, ShardIdentity


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
    if taken and DeviceFence.objects.on_shard(alias).exists():
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


def register_shard(
    alias: str, location: ShardLocation, *, weight: int | None = None, migrate: bool = True
) -> Shard:
    """Register (or update the location of) a shard; idempotent."""
    existing = Shard.objects.filter(alias=alias).first()
    if existing is not None and existing.state == Shard.State.RETIRED:
        raise ShardRegistrationError(f"{alias} is retired; aliases are never reused")
    shard = existing or Shard(alias=alias, number=0)
    _apply_location(shard, location)
    if weight is not None:
        shard.weight = weight
    _validate(shard)

    register_shard_connection(alias, connection_settings_for(shard))
    try:
        connections[alias].ensure_connection()
    except DatabaseError as exc:
        raise ShardRegistrationError(
            f"cannot connect to {location.host}:{location.port}/{location.db_name}: {exc}".strip()
        ) from exc
    if migrate:
        call_command("migrate", database=alias, interactive=False, verbosity=0)

    with transaction.atomic(using=DIRECTORY_ALIAS):
        if existing is None:
            shard.number = _next_number()
        shard.save()
        stamp_identity(alias, shard.number)
    refresh_registry(force=True)
    return shard
