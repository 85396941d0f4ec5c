"""Run a function against many shards in parallel and join the results in Python.

Each call runs in a worker thread with its own Django connections, which are
closed when the call ends so no thread keeps a connection open (and a test
database can always be dropped).
"""

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from django.conf import settings
from django.db import connections

from routers.errors import FanOutError
from routers.registry import ensure_shard_connection, serving_shards

T = TypeVar("T")


def _call_on_shard(fn: Callable[[str], T], alias: str) -> T:
    try:
        return fn(alias)
    finally:
        connections.close_all()


def fan_out(
    fn: Callable[[str], T],
    aliases: Iterable[str] | None = None,
    *,
    return_exceptions: bool = False,
) -> dict[str, T | BaseException]:
    """Call `fn(alias)` for every shard that holds data (or the given ones), in parallel.

    Returns {alias: result}. If any call raises, FanOutError names every failing
    shard, unless return_exceptions is set, in which case the exception is that
    shard's result (so one shard that is down does not hide the others).
    """
    targets = sorted(serving_shards() if aliases is None else set(aliases))
    for alias in targets:
        ensure_shard_connection(alias)
    if not targets:
        return {}
    workers = max(1, min(settings.FANOUT_MAX_WORKERS, len(targets)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fanout") as pool:
        futures = {alias: pool.submit(_call_on_shard, fn, alias) for alias in targets}
    results: dict[str, T | BaseException] = {}
    errors: dict[str, BaseException] = {}
    for alias, future in futures.items():
        exc = future.exception()
        if exc is None:
            results[alias] = future.result()
        elif return_exceptions:
            results[alias] = exc
        else:
            errors[alias] = exc
    if errors:
        raise FanOutError(errors)
    return results
