"""No credential, token, session id or password ever reaches a log line.

The requests go through the whole Django stack in-process; the lines are formatted
by the formatter of the project's own log handler (settings.LOGGING), as an app
node writes them to its log.
"""

import io
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.test import Client

from core.models import User
from core.provisioning import create_provisioning_key
from tests.api_helpers import bearer, post_json, reading
from tests.factories import make_device

SECRET_SHAPES = [
    "Authorization: Bearer k3y1d-AbCdEfGh.{t}",
    "Unexpected auth - 'Token {t}'",
    "header k3y1d-AbCdEfGh.{t}",
    "Cookie: sessionid=abcdefghijklmnop1234; csrftoken=QWERTYUIOPasdfghjkl",
    "body provisioning_key=fleet_abcdefghijklmnopqrstuvwxyz0123",
    'payload {{"password": "hunter2-secret", "token": "xyz"}}',
    "login username=bob&password=hunter2-secret",
]


@pytest.mark.parametrize("line", SECRET_SHAPES)
def test_the_formatter_blanks_every_kind_of_secret(line):
    from core.log_redaction import redact

    token = "Abc123_-x" * 6
    text = line.format(t=token)
    redacted = redact(text)
    for secret in (token, "abcdefghijklmnop1234", "QWERTYUIOPasdfghjkl", "hunter2-secret"):
        assert secret not in redacted
    assert "fleet_abcdefghijklmnopqrstuvwxyz0123" not in redacted


def test_the_formatter_redacts_tracebacks_too():
    from core.log_redaction import RedactingFormatter

    formatter = RedactingFormatter("%(message)s")
    token = "KeyId0123456789.s" + "x" * 42
    try:
        raise ValueError(f"bad token {token}")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), None)
        record.exc_info = sys.exc_info()
    assert token not in formatter.format(record)


@contextmanager
def app_log() -> Iterator[io.StringIO]:
    """Everything logged meanwhile, formatted as the project's console handler does."""
    root = logging.getLogger()
    console = next(h for h in root.handlers if type(h) is logging.StreamHandler)
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(console.formatter)
    root.addHandler(handler)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)


@pytest.mark.parametrize("debug", [True, False])
def test_requests_with_credentials_log_none_of_them(shards, settings, debug):
    settings.DEBUG = debug
    made = make_device(shard="shard_1")
    key = create_provisioning_key("factory")
    User.objects.create_user("bob", password="right-password-123")
    client = Client()
    with app_log() as log:
        send_requests_with_credentials(client, made.token, key)
        session = client.cookies["sessionid"].value

    logged = log.getvalue()
    assert "POST /api/v1/device/uploads" in logged  # the log was captured at all
    secret = made.token.split(".", 1)[1]
    for value in (secret, key, "wrong-password-123", "right-password-123", session):
        assert value not in logged


def send_requests_with_credentials(client: Client, token: str, key: str) -> None:
    upload = {"batch_id": "b1", "readings": [reading()]}
    for header in (
        f"Token {token}",
        token,
        f"Bearer {token}x",
        f"Bearer {token}",
        f"bearer  {token} extra",
        f"Basic {token}",
    ):
        post_json(client, "/api/v1/device/uploads", upload, HTTP_AUTHORIZATION=header)
        client.get("/api/v1/device/commands", HTTP_AUTHORIZATION=header)
    client.get("/api/v1/device/nope", **bearer(token))
    post_json(client, "/api/v1/device/enroll", {"provisioning_key": key, "serial": "SN-log"})
    post_json(client, "/api/v1/device/enroll", {"provisioning_key": key + "x", "serial": "SN-2"})
    client.post("/accounts/login/", {"username": "bob", "password": "wrong-password-123"})
    client.post("/accounts/login/", {"username": "bob", "password": "right-password-123"})
    client.get("/api/v1/devices")
