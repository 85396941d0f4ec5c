"""Device credentials cached per process and in Redis, and forgotten everywhere at once.

A steady-state device request must not query the directory, so each credential's row
is cached in Redis (CREDENTIAL_REDIS_TTL) and, briefly, in the process
(CREDENTIAL_LOCAL_TTL, at most a second or two). Every change to a device or to its
credentials forgets the Redis copy once the change commits (core.models calls
`forget_after_commit` from its signals and querysets), so every node sees the change
as soon as its short local copy runs out.

Filling the cache races with forgetting it: a reader that loaded a row just before a
change committed could store that old row after the change forgot it, and the old row
would then live for CREDENTIAL_REDIS_TTL. So each credential has a generation counter
in Redis that forgetting increments, and a reader stores what it loaded only if the
generation is still the one it saw before loading (one Lua script, atomic in Redis).

An unknown key id is cached as unknown in Redis only, briefly, so a probe costs no
directory query; creating the credential forgets that answer when it commits. It is
never cached in the process, where nothing could forget it.
"""

import logging
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.db import transaction
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"
# How long Redis may answer "no such credential" for a key id (creating it forgets sooner).
UNKNOWN_TTL_SECONDS = 60
# Stores ARGV[2] at KEYS[1] only while the generation KEYS[2] is still ARGV[1].
_STORE_IF_GENERATION = """
local generation = redis.call('GET', KEYS[2]) or ''
if generation == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
    return 1
end
return 0
"""
_scripts: dict[int, Any] = {}


def _row_key(key_id: str) -> str:
    return f"credential:{key_id}"


def _generation_key(key_id: str) -> str:
    return f"credential-generation:{key_id}"


def _store_script(client: Any) -> Any:
    script = _scripts.get(id(client))
    if script is None:
        script = _scripts[id(client)] = client.register_script(_STORE_IF_GENERATION)
    return script


def _from_redis(key_id: str, load: Callable[[], dict | None]) -> dict | str | None:
    """The row from Redis, or loaded and stored there unless it changed meanwhile."""
    shared = caches["default"]
    client = shared.client.get_client(write=True)
    row_key = shared.make_key(_row_key(key_id))
    generation_key = shared.make_key(_generation_key(key_id))
    raw_row, generation = client.mget([row_key, generation_key])
    if raw_row is not None:
        return shared.client.decode(raw_row)
    row = load()
    value, ttl = (row, settings.CREDENTIAL_REDIS_TTL) if row else (UNKNOWN, UNKNOWN_TTL_SECONDS)
    _store_script(client)(
        keys=[row_key, generation_key],
        args=[generation or b"", shared.client.encode(value), ttl],
    )
    return value


def cached_credential(key_id: str, load: Callable[[], dict | None]) -> dict | None:
    """The credential row for `key_id` from the caches, or from `load()` (the directory).

    None when there is no usable credential. With Redis unreachable every miss of the
    local cache loads from the directory: slower, never wrong.
    """
    local = caches["local"]
    row = local.get(_row_key(key_id))
    if row is None:
        try:
            row = _from_redis(key_id, load)
        except (RedisError, OSError) as exc:
            logger.warning("credential cache unavailable, asking the directory: %r", exc)
            row = load()
        if not row or row == UNKNOWN:
            return None
        local.set(_row_key(key_id), row, settings.CREDENTIAL_LOCAL_TTL)
    return row


def forget_now(key_ids: Iterable[str]) -> None:
    """Drop these credentials from this process and from Redis, bumping their generations."""
    key_ids = [str(key_id) for key_id in key_ids]
    if not key_ids:
        return
    caches["local"].delete_many([_row_key(key_id) for key_id in key_ids])
    shared = caches["default"]
    try:
        pipeline = shared.client.get_client(write=True).pipeline(transaction=False)
        for key_id in key_ids:
            generation_key = shared.make_key(_generation_key(key_id))
            pipeline.incr(generation_key)
            pipeline.expire(generation_key, settings.CREDENTIAL_REDIS_TTL)
            pipeline.delete(shared.make_key(_row_key(key_id)))
        pipeline.execute()
    except (RedisError, OSError) as exc:
        # Redis cannot serve the stale copy while it is unreachable; if it kept its data,
        # the copy lives at most CREDENTIAL_REDIS_TTL. Say so loudly.
        logger.error("could not forget %s cached credential(s) in Redis: %r", len(key_ids), exc)


def forget_after_commit(key_ids: Iterable[str], using: str = "default") -> None:
    """Forget these credentials once the current transaction on `using` commits (or now)."""
    key_ids = list(key_ids)
    if key_ids:
        transaction.on_commit(lambda: forget_now(key_ids), using=using)
