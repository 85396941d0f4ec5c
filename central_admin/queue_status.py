"""The Celery side of the cluster: queue length in the Redis broker, and live workers.

The queue is a Redis list named after the queue; kombu keeps one more list per
priority step (`<queue>\\x06\\x16<n>`), so all of them are counted. Workers are
those that answer a broadcast ping within a second.
"""

from dataclasses import dataclass, field

import redis
from django.conf import settings

from core.celery import app

PRIORITY_SEPARATOR = "\x06\x16"
PING_TIMEOUT = 1.0


@dataclass
class QueueStatus:
    queue: str
    length: int | None = None
    error: str = ""


@dataclass
class WorkersStatus:
    workers: list[str] = field(default_factory=list)
    error: str = ""


def read_queue() -> QueueStatus:
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    status = QueueStatus(queue)
    try:
        client = redis.Redis.from_url(
            settings.CELERY_BROKER_URL, socket_timeout=1, socket_connect_timeout=1
        )
        keys = [queue, *client.scan_iter(match=f"{queue}{PRIORITY_SEPARATOR}*", count=100)]
        status.length = sum(client.llen(key) for key in keys)
    except redis.RedisError as exc:
        status.error = f"unreachable: {exc}"
    return status


def read_workers() -> WorkersStatus:
    status = WorkersStatus()
    try:
        answers = app.control.inspect(timeout=PING_TIMEOUT).ping() or {}
    except Exception as exc:  # kombu raises its own and the transport's errors
        status.error = f"unreachable: {exc}"
        return status
    status.workers = sorted(answers)
    return status
