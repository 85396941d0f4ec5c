"""Liveness and readiness for the load balancer and for operators.

/healthz answers from the process alone, so HAProxy takes a node out of
rotation only when the node itself is broken; a shard that is down must not
empty the pool. /readyz checks every dependency (directory, cache, broker,
each shard in parallel) and reports per-part latency as JSON; 503 if any fails.
That names the shards and their latencies, so /readyz answers only clients on
READYZ_ALLOWED_NETWORKS (by their address behind HAProxy, core/client_ip.py) and
logged-in staff; everyone else gets the 404 of a page that does not exist.
"""

import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.db import DatabaseError, connections
from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from core.celery import app as celery_app
from core.client_ip import address_in, client_ip
from core.replication import read_replication
from routers.aliases import DIRECTORY_ALIAS
from routers.fanout import fan_out
from routers.registry import serving_shards


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _timed(check: Callable[[], Any]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:  # a readiness probe reports every failure, whatever its kind
        return {"ok": False, "error": str(exc).strip()[:300]}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


def _select_one(alias: str) -> None:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")


def _database_check(alias: str) -> dict[str, Any]:
    """A round trip, then which primary answered and its standbys (not part of readiness:
    a database that lost its standby still serves)."""
    check = _timed(lambda: _select_one(alias))
    if check["ok"]:
        try:
            with connections[alias].cursor() as cursor:
                check["replication"] = read_replication(cursor).as_json()
        except DatabaseError as exc:
            check["replication_error"] = str(exc).strip()[:300]
    return check


def _cache_round_trip() -> None:
    cache = caches["default"]
    cache.client.get_client(write=True).ping()


def _broker_round_trip() -> None:
    with celery_app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=1)


def may_read_readiness(request: HttpRequest) -> bool:
    """An internal client (by address), or a staff user's session."""
    if address_in(client_ip(request), settings.READYZ_ALLOWED_NETWORKS):
        return True
    try:
        return request.user.is_active and request.user.is_staff
    except DatabaseError:  # the directory is down: no session to check
        return False


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    if not may_read_readiness(request):
        raise Http404
    checks: dict[str, Any] = {
        "directory": _database_check(DIRECTORY_ALIAS),
        "cache": _timed(_cache_round_trip),
        "broker": _timed(_broker_round_trip),
    }
    try:
        aliases = serving_shards()
    except Exception as exc:  # the directory is down: no list of shards to check
        aliases, checks["shards"] = [], {"ok": False, "error": str(exc).strip()[:300]}
    shards = fan_out(_database_check, aliases)
    ready = all(c.get("ok") for c in checks.values()) and all(s["ok"] for s in shards.values())
    body = {"ready": ready, **checks, "shards": shards}
    return JsonResponse(body, status=200 if ready else 503)
