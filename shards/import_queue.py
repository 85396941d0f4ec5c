"""Queueing imports: at most one import task per shard is queued or running, whatever
the upload rate.

An upload's commit kicks its shard: a Redis key set only if absent (SET NX) says an
import of that shard is queued or running, so a busy shard costs the request path
one Redis round trip and no Celery publish. The task holds the key while it claims
and imports (shards.tasks.import_staged_uploads), releases it once a claim finds
nothing, and then looks once more: an upload that committed while the key was still
set is found by that last look, and one that commits later kicks a new task. The
key expires (KICK_TTL_SECONDS) in case its task is lost; beat kicks every shard
every IMPORT_KICK_SECONDS as well, which is what imports uploads staged while Redis
was down, or copied by a move.
"""

import logging

from django.core.cache import caches
from django_redis.exceptions import ConnectionInterrupted
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import RedisError

from core.celery import app as celery_app

logger = logging.getLogger(__name__)

IMPORT_SHARD_TASK = "shards.tasks.import_staged_uploads"
# Longer than a task normally waits in the queue and runs (IMPORT_BUDGET_SECONDS); a lost
# task's key must not stop kicks for long.
KICK_TTL_SECONDS = 10
# A broker outage must cost the device request a fraction of a second, not seconds:
# the upload is already durable and beat kicks its shard again.
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.1}
CACHE_ERRORS = (ConnectionInterrupted, RedisError, OSError)


def _kick_key(alias: str) -> str:
    return f"import-kick:{alias}"


def kick_import(alias: str) -> bool:
    """See that an import of `alias`'s staged uploads is queued; True if this call queued it.

    Never raises: the upload is durable already, so a broker or Redis outage is
    logged and left to beat. Sent by name: shards.tasks calls into the ingest
    modules, never the other way round.
    """
    cache = caches["default"]
    try:
        if not cache.add(_kick_key(alias), 1, timeout=KICK_TTL_SECONDS):
            return False
    except CACHE_ERRORS as exc:
        logger.warning("import kick of %s without its Redis key: %r", alias, exc)
    try:
        celery_app.send_task(IMPORT_SHARD_TASK, args=(alias,), retry_policy=PUBLISH_RETRY_POLICY)
    except (BrokerError, RedisError, OSError) as exc:
        logger.warning("could not queue the import of %s; beat will kick it: %s", alias, exc)
        release_kick(alias)  # the next upload tries again
        return False
    return True


def release_kick(alias: str) -> None:
    """Called by the import task when a claim found nothing: later uploads kick a new one."""
    try:
        caches["default"].delete(_kick_key(alias))
    except CACHE_ERRORS as exc:
        logger.warning("could not clear the import kick of %s: %r", alias, exc)
