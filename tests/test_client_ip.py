"""The client's address: X-Forwarded-For counts only when a trusted proxy sent it."""

import pytest
from django.test import RequestFactory

from core.client_ip import client_ip


@pytest.mark.parametrize(
    ("remote", "forwarded", "expected"),
    [
        ("203.0.113.5", None, "203.0.113.5"),  # a direct client
        ("203.0.113.5", "127.0.0.1", "203.0.113.5"),  # its own header proves nothing
        ("127.0.0.1", "198.51.100.7", "198.51.100.7"),  # through HAProxy
        ("127.0.0.1", "10.0.0.1, 198.51.100.7", "198.51.100.7"),  # the proxy's entry is last
        ("127.0.0.1", "198.51.100.7,2001:db8::7", "2001:db8::7"),
        ("::1", "198.51.100.7", "198.51.100.7"),
        ("::ffff:127.0.0.1", "198.51.100.7", "198.51.100.7"),
        ("127.0.0.1", None, "127.0.0.1"),  # the proxy's own request (or a local probe)
        ("127.0.0.1", "not-an-address", "127.0.0.1"),
        ("127.0.0.1", "198.51.100.7, unknown", "127.0.0.1"),
    ],
)
def test_client_ip_with_the_default_trusted_proxies(remote, forwarded, expected):
    meta = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        meta["HTTP_X_FORWARDED_FOR"] = forwarded
    assert client_ip(RequestFactory().get("/", **meta)) == expected


def test_trusted_proxies_are_configurable(settings):
    settings.TRUSTED_PROXIES = ["10.0.5.0/24"]
    through_lb = RequestFactory().get(
        "/", REMOTE_ADDR="10.0.5.9", HTTP_X_FORWARDED_FOR="198.51.100.7"
    )
    assert client_ip(through_lb) == "198.51.100.7"
    loopback = RequestFactory().get("/", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="1.2.3.4")
    assert client_ip(loopback) == "127.0.0.1"
