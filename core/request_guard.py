"""Refusing requests the stack cannot take, before any view runs, with a 4xx that says why.

- A chunked body (Transfer-Encoding) is 411: uWSGI hands Django no body for it, so
  it would otherwise be read as empty and refused for the wrong reason.
- A Content-Length that is not a number is 400 (Django's size check would crash on it).
- A body sent to the API is JSON in UTF-8 (RFC 8259), declared as application/json:
  anything else is 415, never guessed at (api.body reads the bytes themselves).
- A NUL character in the path, the query string, a header or a form field is 400:
  PostgreSQL stores no NUL in text, and every view would otherwise have to catch what
  its database driver raises for one (the admin's search box, a filter, a move form,
  the login lockout's record of the client's headers...).

API paths answer JSON `{"detail": ...}` like every other API error; pages answer text.
"""

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.http import parse_header_parameters

API_PREFIX = "/api/"
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
JSON_MEDIA_TYPE = "application/json"
UTF8_NAMES = {"utf-8", "utf8"}


def refusal(request: HttpRequest, status: int, detail: str) -> HttpResponse:
    if request.path.startswith(API_PREFIX):
        return JsonResponse({"detail": detail}, status=status)
    return HttpResponse(detail, status=status, content_type="text/plain; charset=utf-8")


def _has_nul(pairs) -> bool:
    return any("\x00" in key or any("\x00" in v for v in values) for key, values in pairs)


def api_body_problem(content_type: str) -> str | None:
    """Why an API request body of this Content-Type is refused, or None."""
    media_type, params = parse_header_parameters(content_type)
    if media_type.lower() != JSON_MEDIA_TYPE:
        return f"send the body as {JSON_MEDIA_TYPE}, not {media_type or 'without a type'}"
    if params.get("charset", "utf-8").lower() not in UTF8_NAMES:
        return f"JSON bodies are UTF-8, not {params['charset']}"
    return None


def problem_of(request: HttpRequest) -> tuple[int, str] | None:
    """(status, detail) for a request to refuse, or None."""
    meta = request.META
    if "chunked" in meta.get("HTTP_TRANSFER_ENCODING", "").lower():
        return 411, "a Content-Length is required: chunked request bodies are not accepted"
    length = meta.get("CONTENT_LENGTH") or ""
    if length and not (length.isascii() and length.isdigit()):
        return 400, "Content-Length must be a whole number of bytes"
    if "\x00" in request.path or _has_nul(request.GET.lists()):
        return 400, "the URL must not contain NUL (\\u0000) characters"
    if any("\x00" in value for key, value in meta.items() if key.startswith("HTTP_")):
        return 400, "headers must not contain NUL (\\u0000) characters"
    content_type = meta.get("CONTENT_TYPE", "")
    if request.path.startswith(API_PREFIX):
        unsupported = int(length or 0) and api_body_problem(content_type)
        return (415, unsupported) if unsupported else None
    is_form = request.method == "POST" and content_type.startswith(FORM_TYPES)
    if is_form and _has_nul(request.POST.lists()):
        return 400, "form fields must not contain NUL (\\u0000) characters"
    return None


class RequestGuardMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        problem = problem_of(request)
        if problem is not None:
            return refusal(request, *problem)
        return self.get_response(request)
