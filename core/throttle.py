"""Rate limits counted in Redis, shared by every node, failing open.

The counters are sliding-window counters of the `limits` library, kept on the
Redis server of the django-redis cache ("default", through its connection pool
and timeouts) under the cache's key prefix. Counting a hit is one round trip
(a Lua script), and a request that is turned away is not counted, so a client
that keeps knocking gets in again as its window slides on.

When Redis cannot be reached nothing is throttled: uploads must keep working
while Redis is down, and a limit is not worth an outage. Limits are rate
strings such as "300/minute" or "20/hour"; an empty string or "off" turns one off.
"""

import logging
import math
import time
from functools import lru_cache

from django.conf import settings
from django_redis import get_redis_connection
from limits import RateLimitItem, parse
from limits.storage import RedisStorage
from limits.strategies import SlidingWindowCounterRateLimiter
from redis import ConnectionPool
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)
_OFF = {"", "off", "none"}


class Throttled(Exception):
    """A client went over a limit; answered with 429 and Retry-After."""

    status = 429

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


@lru_cache(maxsize=64)
def rate(spec: str) -> RateLimitItem | None:
    """'300/minute' -> the limit; '' or 'off' -> None (not limited)."""
    spec = spec.strip()
    return None if spec.lower() in _OFF else parse(spec)


_limiters: dict[ConnectionPool, SlidingWindowCounterRateLimiter] = {}


def _limiter() -> SlidingWindowCounterRateLimiter:
    """One limiter per Redis connection pool (there is one per cache configuration)."""
    pool = get_redis_connection("default").connection_pool
    limiter = _limiters.get(pool)
    if limiter is None:
        prefix = settings.CACHES["default"].get("KEY_PREFIX") or "fleet"
        storage = RedisStorage("redis://", connection_pool=pool, key_prefix=f"{prefix}:throttle")
        limiter = _limiters[pool] = SlidingWindowCounterRateLimiter(storage)
    return limiter


def _seconds_to_wait(
    limiter: SlidingWindowCounterRateLimiter, item: RateLimitItem, key: tuple[str, ...]
) -> int:
    reset_at = limiter.get_window_stats(item, *key).reset_time
    return max(1, math.ceil(reset_at - time.time()))


def hit(spec: str, *key: str) -> int | None:
    """Count one event under `key`; the seconds to wait if that went over the limit."""
    item = rate(spec)
    if item is None:
        return None
    try:
        limiter = _limiter()
        if limiter.hit(item, *key):
            return None
        return _seconds_to_wait(limiter, item, key)
    except RedisError as exc:
        logger.warning("throttle %s not applied, Redis unavailable: %s", key[0], exc)
        return None


def used_up(spec: str, *key: str) -> int | None:
    """Without counting: the seconds to wait if `key` has no event left, else None."""
    item = rate(spec)
    if item is None:
        return None
    try:
        limiter = _limiter()
        if limiter.test(item, *key):
            return None
        return _seconds_to_wait(limiter, item, key)
    except RedisError as exc:
        logger.warning("throttle %s not checked, Redis unavailable: %s", key[0], exc)
        return None
