"""Login throttling beside django-axes: the lockout answer and a per-client ceiling.

django-axes locks a (username, client address) pair out after AXES_FAILURE_LIMIT
failures, so nobody can lock a user out from elsewhere. That alone would let
one client try a few passwords on every account (password spraying), so failed
logins are also counted per client address across all usernames
(LOGIN_CLIENT_FAILURE_LIMIT); past it, that client's login posts get 429 until
its window slides on. Both answers carry Retry-After.
"""

import math
from collections.abc import Callable
from functools import cached_property

from django.conf import settings
from django.contrib.auth.signals import user_login_failed
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.urls import reverse

from core.client_ip import client_ip
from core.throttle import hit, used_up

_KEY = "login-failures"


def lockout_response(
    request: HttpRequest,
    original_response: HttpResponse | None = None,
    credentials: dict | None = None,
) -> HttpResponse:
    """django-axes' answer to a locked-out (username, address) pair."""
    minutes = math.ceil(settings.AXES_COOLOFF_TIME.total_seconds() / 60)
    return _too_many(
        "Too many failed logins for this username from your address."
        f" Try again in {minutes} minutes.",
        math.ceil(settings.AXES_COOLOFF_TIME.total_seconds()),
    )


def _too_many(message: str, retry_after: int) -> HttpResponse:
    response = HttpResponse(message, status=429, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = str(retry_after)
    return response


@receiver(user_login_failed, dispatch_uid="core.throttle_login.count_failure")
def count_failure(sender, credentials: dict, request: HttpRequest | None = None, **kwargs) -> None:
    if request is not None:
        hit(settings.LOGIN_CLIENT_FAILURE_LIMIT, _KEY, client_ip(request))


class ClientLoginThrottleMiddleware:
    """Answers 429 to login posts (portal and admin) from a client over its failures."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    @cached_property
    def login_paths(self) -> set[str]:
        return {reverse(settings.LOGIN_URL), reverse("admin:login")}

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method == "POST" and request.path in self.login_paths:
            wait = used_up(settings.LOGIN_CLIENT_FAILURE_LIMIT, _KEY, client_ip(request))
            if wait is not None:
                return _too_many(
                    f"Too many failed logins from your address. Try again in {wait} seconds.",
                    wait,
                )
        return self.get_response(request)
