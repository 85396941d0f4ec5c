"""One log line per request with what an operator needs: who, which shard, how long.

Device requests carry `device_id` and `shard_alias` (set by the device token
authentication); other requests log '-' for both.
"""

import logging
import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

logger = logging.getLogger("fleet.requests")
# HAProxy probes every node several times a second; logging that would drown the rest.
UNLOGGED_PATHS = frozenset({"/healthz"})


class RequestLogMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        if request.path in UNLOGGED_PATHS:
            return response
        logger.info(
            "%s %s %s %.1fms device=%s shard=%s",
            request.method,
            request.path,
            response.status_code,
            (time.perf_counter() - started) * 1000,
            getattr(request, "device_id", "-"),
            getattr(request, "shard_alias", "-"),
        )
        return response
