"""Turning failures into answers a client can act on: 4xx naming the fault, 503 to retry.

A client's mistake is never a 500. A database that cannot be reached (a shard
or the directory down) is a 503 with Retry-After, so devices back off and retry.
A client over a rate limit (core/throttle.py) gets 429 with Retry-After.
"""

import logging

from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from api.body import UnreadableBody
from core.access import CommandNotAllowed, DeviceNotVisible
from core.provisioning import EnrollmentError
from core.throttle import Throttled
from routers.errors import FanOutError, UnknownDevice
from shards.commands import CommandError
from shards.fence import DeviceMoved

logger = logging.getLogger(__name__)
RETRY_AFTER_SECONDS = 5
_LOCATION_PREFIXES = {"body", "payload", "query", "path", "data"}


def field_path(loc: tuple | list) -> str:
    """('body', 'payload', 'readings', 3, 'value') -> 'readings[3].value'."""
    parts = list(loc)
    while parts and parts[0] in _LOCATION_PREFIXES:
        parts.pop(0)
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def validation_errors(exc: ValidationError) -> list[dict[str, str]]:
    errors = []
    for error in exc.errors:
        message = str(error.get("msg", "invalid"))
        if error.get("type") == "json_invalid":
            message = "the body is not valid JSON"
        errors.append({"field": field_path(error.get("loc", ())), "message": message})
    return errors


def install_error_handlers(api: NinjaAPI) -> None:
    def answer(request, status: int, detail: str, **extra) -> HttpResponse:
        return api.create_response(request, {"detail": detail, **extra}, status=status)

    @api.exception_handler(ValidationError)
    def invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
        errors = validation_errors(exc)
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return answer(request, 400, f"invalid request: {summary}", errors=errors)

    @api.exception_handler(RequestDataTooBig)
    def too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
        return answer(request, 413, "the body is larger than the upload limit")

    @api.exception_handler(AuthenticationError)
    def unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
        return answer(request, 401, "missing, unknown, expired or revoked credentials")

    @api.exception_handler(EnrollmentError)
    def enrollment(request: HttpRequest, exc: EnrollmentError) -> HttpResponse:
        return answer(request, exc.status, str(exc))

    @api.exception_handler(Throttled)
    def throttled(request: HttpRequest, exc: Throttled) -> HttpResponse:
        response = answer(request, 429, str(exc))
        response["Retry-After"] = str(exc.retry_after)
        return response

    @api.exception_handler(CommandError)
    def command(request: HttpRequest, exc: CommandError) -> HttpResponse:
        return answer(request, exc.status, str(exc))

    @api.exception_handler(UnknownDevice)
    @api.exception_handler(DeviceNotVisible)
    def unknown_device(request: HttpRequest, exc: Exception) -> HttpResponse:
        return answer(request, 404, "no such device")

    @api.exception_handler(CommandNotAllowed)
    def not_allowed(request: HttpRequest, exc: CommandNotAllowed) -> HttpResponse:
        return answer(request, 403, str(exc))

    @api.exception_handler(HttpError)
    def http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
        if exc.status_code == 400 and str(exc).startswith("Cannot parse request body"):
            cause = exc.__cause__
            message = str(cause) if isinstance(cause, UnreadableBody) else "not valid JSON"
            errors = [{"field": "body", "message": message}]
            return answer(request, 400, f"invalid request: body: {message}", errors=errors)
        return answer(request, exc.status_code, str(exc))

    @api.exception_handler(Exception)
    def internal_error(request: HttpRequest, exc: Exception) -> HttpResponse:
        """Our fault, not the client's: logged with its traceback, answered without one."""
        logger.exception("internal error answering %s %s", request.method, request.path)
        return answer(request, 500, "internal error; it has been logged")

    def unavailable(request: HttpRequest, exc: Exception) -> HttpResponse:
        logger.warning("database unavailable for %s: %s", request.path, exc)
        response = answer(request, 503, "storage is unavailable right now; retry later")
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response

    for failure in (OperationalError, InterfaceError, DeviceMoved, FanOutError):
        api.add_exception_handler(failure, unavailable)


def unknown_endpoint(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Any other path under /api/: a JSON 404, never Django's page listing the URLconf."""
    return JsonResponse({"detail": f"no such API endpoint: {request.path}"}, status=404)
