"""Shard connections registered at run time from the directory's shard registry.

Shards are not in settings.DATABASES: each process reads the registry from the
directory and adds a connection alias per shard. A process re-reads it when it
meets an alias it does not know (a device placed on a brand-new shard) and at
most every SHARD_REGISTRY_TTL seconds when asked for the list of shards, so a
shard registered while the process runs is used within seconds, without restart.
A shard that is retired loses its alias in the same way, so nothing can reach it.
"""

import threading
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connections

from routers.aliases import DIRECTORY_ALIAS
from routers.errors import UnknownShard

# Keys of a connection's settings that say where it points; a change re-registers it.
_LOCATION_KEYS = ("NAME", "HOST", "PORT", "USER", "PASSWORD", "OPTIONS")


@dataclass(frozen=True)
class ShardInfo:
    """What routing needs to know of a registry row."""

    alias: str
    number: int
    state: str
    weight: int

    @property
    def holds_data(self) -> bool:
        """Active and draining shards still own devices; retired ones own none."""
        return self.state != "retired"


_lock = threading.Lock()
_shards: dict[str, ShardInfo] = {}
_loaded_at: float | None = None
# Aliases this module added to connections.settings. Only these are dropped when their
# shard is retired: an alias configured in settings.DATABASES (the test settings'
# shard_1 and shard_2) belongs to the settings, not to the registry.
_runtime_aliases: set[str] = set()


def connection_settings_for(shard: Any) -> dict[str, Any]:
    """Settings for a shard alias: the directory's engine and options, the shard's location."""
    base = connections.settings[DIRECTORY_ALIAS]
    config = {key: value for key, value in base.items() if key != "TEST"}
    config.update(
        NAME=shard.db_name,
        HOST=shard.host,
        PORT=str(shard.port),
        USER=shard.db_user or settings.SHARD_DEFAULT_USER,
        PASSWORD=shard.db_password or settings.SHARD_DEFAULT_PASSWORD,
        OPTIONS={**base.get("OPTIONS", {}), **(shard.options or {})},
        TEST={"NAME": None, "MIGRATE": True, "MIRROR": None, "DEPENDENCIES": []},
    )
    return config


def _same_location(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(str(a.get(key)) == str(b.get(key)) for key in _LOCATION_KEYS)


def register_shard_connection(alias: str, config: dict[str, Any]) -> None:
    """Add (or re-point) the connection alias for a shard in this process."""
    current = connections.settings.get(alias)
    if current is not None and _same_location(current, config):
        return
    if current is None:
        _runtime_aliases.add(alias)
    connections.settings[alias] = config
    if current is not None:
        # This thread's old connection points at the old location; drop it.
        _close_thread_connection(alias)


def _close_thread_connection(alias: str) -> None:
    """Close and forget this thread's connection for `alias`, if it opened one."""
    if hasattr(connections._connections, alias):
        getattr(connections._connections, alias).close()
        delattr(connections._connections, alias)


def _drop_connection(alias: str) -> None:
    """Remove `alias` from this process's connections; the caller holds _lock."""
    _close_thread_connection(alias)
    connections.settings.pop(alias, None)
    _runtime_aliases.discard(alias)


def unregister_shard_connection(alias: str) -> None:
    """Forget a shard alias in this process (a retired shard, or a test's throw-away one)."""
    if alias == DIRECTORY_ALIAS:
        raise ValueError("the directory connection cannot be unregistered")
    with _lock:
        _shards.pop(alias, None)
        _drop_connection(alias)


def refresh_registry(*, force: bool = False) -> dict[str, ShardInfo]:
    """Re-read the registry if it is older than SHARD_REGISTRY_TTL (or when forced)."""
    global _loaded_at
    now = time.monotonic()
    if not force and _loaded_at is not None and now - _loaded_at < settings.SHARD_REGISTRY_TTL:
        return dict(_shards)
    from core.models import Shard

    rows = list(Shard.objects.using(DIRECTORY_ALIAS).all())
    with _lock:
        _shards.clear()
        for row in rows:
            _shards[row.alias] = ShardInfo(row.alias, row.number, row.state, row.weight)
            if row.state != Shard.State.RETIRED:
                register_shard_connection(row.alias, connection_settings_for(row))
            elif row.alias in _runtime_aliases:
                # Retired: it holds no devices, so a connection could only do harm.
                _drop_connection(row.alias)
        _loaded_at = now
        return dict(_shards)


def ensure_shard_connection(alias: str) -> None:
    """Make sure this process can talk to `alias`, reading the registry once if needed."""
    known = _shards.get(alias)
    if known is not None and known.holds_data and alias in connections.settings:
        return
    shards = refresh_registry(force=True)
    if alias not in shards or not shards[alias].holds_data:
        raise UnknownShard(f"shard {alias!r} is not registered (or is retired)")


def own_connection_params(alias: str) -> dict[str, Any]:
    """psycopg2 keywords for a connection of the caller's own to `alias` (the directory or
    a shard, looked up in the registry if need be), beside Django's per-thread ones: for
    COPY between servers, a lock held by a transaction kept open, the pooler's console."""
    if alias != DIRECTORY_ALIAS:
        ensure_shard_connection(alias)
    params = connections[alias].get_connection_params()
    params.pop("cursor_factory", None)
    return params


def serving_shards(*, fresh: bool = False) -> list[str]:
    """Shards that hold data (active or draining): the targets of cross-shard reads.

    `fresh` reads the registry now: for work that must not miss a shard another process
    added within SHARD_REGISTRY_TTL (a deletion that says it is finished).
    """
    registry = refresh_registry(force=fresh)
    return sorted(alias for alias, info in registry.items() if info.holds_data)
