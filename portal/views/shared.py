"""What several portal views share: shard outages as 503s, bad ranges as 400s."""

from collections.abc import Callable
from functools import wraps

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import render

from portal.ranges import BadRange, TimeRange, range_from
from routers.errors import FanOutError
from shards.fence import DeviceMoved


def shard_outage_as_503(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A device whose shard is down, or held by a move for too long, gets a page saying so."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except (OperationalError, InterfaceError, FanOutError, DeviceMoved):
            response = render(request, "portal/unavailable.html", status=503)
            response["Retry-After"] = "10"
            return response

    return wrapper


def requested_range(request: HttpRequest) -> TimeRange | HttpResponse:
    """The range the query string names, or a 400 response that says what is wrong."""
    try:
        return range_from(request.GET)
    except BadRange as exc:
        return HttpResponseBadRequest(f"Bad time range: {exc}\n", content_type="text/plain")


def wants_json(request: HttpRequest) -> bool:
    """Our script asks for JSON; a plain form post (no script) gets pages and redirects."""
    return "application/json" in request.headers.get("Accept", "")
