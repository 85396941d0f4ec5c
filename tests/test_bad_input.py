"""Bad input answers a 4xx that names the problem, never a 500, and writes nothing.

Bodies in the wrong form, framing the stack cannot read, NUL characters, nesting too
deep for a parser, digits that only look like digits, and limits named as limits.
"""

import json

import pytest
from django.test import Client

from core.models import MoveJob
from shards.models import Command, Upload
from tests.api_helpers import bearer, post_json, reading
from tests.factories import make_device

UPLOADS = "/api/v1/device/uploads"
UPLOAD = {"batch_id": "b-1", "readings": [reading()]}


@pytest.fixture
def device(shards):
    return make_device(shard="shard_1")


def deep(levels: int) -> str:
    return '{"a": ' * levels + "1" + "}" * levels


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", json.dumps(UPLOAD)),
        ("application/x-www-form-urlencoded", "batch_id=b-1"),
        (
            "multipart/form-data; boundary=x",
            '--x\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--x--',
        ),
        ("application/xml", "<upload/>"),
        ("", json.dumps(UPLOAD)),
        ("application/json; charset=utf-16", json.dumps(UPLOAD)),
    ],
    ids=["text", "form", "multipart", "xml", "none", "utf16-declared"],
)
def test_an_upload_that_is_not_utf8_json_is_415(device, content_type, body):
    answer = Client().post(UPLOADS, data=body, content_type=content_type, **bearer(device.token))
    assert answer.status_code == 415, answer.content
    assert "application/json" in answer.json()["detail"] or "UTF-8" in answer.json()["detail"]
    assert not Upload.objects.for_device(device.device).exists()


def test_a_utf16_body_sent_as_json_is_400_not_guessed(device):
    body = json.dumps(UPLOAD).encode("utf-16")
    answer = Client().post(
        UPLOADS, data=body, content_type="application/json", **bearer(device.token)
    )
    assert answer.status_code == 400
    assert "UTF-8" in answer.json()["detail"]
    assert not Upload.objects.for_device(device.device).exists()


def test_a_chunked_body_is_refused_clearly_with_411(device):
    answer = Client().post(
        UPLOADS,
        data=json.dumps(UPLOAD),
        content_type="application/json",
        HTTP_TRANSFER_ENCODING="chunked",
        **bearer(device.token),
    )
    assert answer.status_code == 411
    assert "Content-Length" in answer.json()["detail"]


def test_a_content_length_that_is_not_a_number_is_400(device):
    answer = Client().post(
        UPLOADS, data="{}", content_type="application/json", CONTENT_LENGTH="12abc",
        **bearer(device.token),
    )  # fmt: skip
    assert answer.status_code == 400


def test_json_nested_too_deeply_is_400_everywhere(device, root_client):
    pk = device.device.pk
    body = '{"name": "reboot", "args": ' + deep(2000) + "}"
    answer = root_client.post(
        f"/api/v1/devices/{pk}/commands", body, content_type="application/json"
    )
    assert answer.status_code == 400, answer.content
    assert "nested" in answer.json()["detail"]
    shallow_enough = '{"name": "reboot", "args": ' + deep(40) + "}"
    answer = root_client.post(
        f"/api/v1/devices/{pk}/commands", shallow_enough, content_type="application/json"
    )
    assert answer.status_code == 400 and "nested" in answer.json()["detail"]

    portal = root_client.post(f"/devices/{pk}/commands", {"name": "reboot", "args": deep(2000)})
    assert portal.status_code == 400
    assert "nested" in portal.content.decode()
    admin_form = root_client.post(
        f"/admin/core/device/{pk}/commands/", {"name": "reboot", "args": deep(2000)}, follow=True
    )
    assert admin_form.status_code == 200 and "nested" in admin_form.content.decode()
    assert not Command.objects.for_device(device.device).exists()


def test_a_result_over_the_limit_names_the_limit(device):
    command = post_json(
        Client(), UPLOADS, UPLOAD, **bearer(device.token)
    )  # a report first, so the device is known to be fine
    assert command.status_code == 202
    from shards.commands import create_command

    queued = create_command(device.device.pk, "dump")
    Client().get("/api/v1/device/commands", **bearer(device.token))
    answer = post_json(
        Client(),
        f"/api/v1/device/commands/{queued.pk}/result",
        {"status": "succeeded", "result": "x" * (17 * 1024)},
        **bearer(device.token),
    )
    assert answer.status_code == 400
    assert "16384 bytes" in answer.json()["detail"]
    assert "not valid JSON" not in answer.json()["detail"]


@pytest.mark.parametrize(
    "path",
    [
        "/admin/core/device/?q=%00",
        "/admin/core/device/?shard=%00",
        "/admin/core/shard/%00/change/",
        "/admin/core/user/?q=a%00b",
        "/devices/?x=%00",
    ],
)
def test_nul_characters_in_urls_are_400(root_client, path):
    assert root_client.get(path).status_code == 400


def test_nul_in_the_admin_move_form_is_400_and_moves_nothing(device, root_client):
    answer = root_client.post(f"/admin/core/device/{device.device.pk}/move/", {"target": "\x00"})
    assert answer.status_code == 400
    assert "NUL" in answer.content.decode()
    assert not MoveJob.objects.exists()


@pytest.mark.parametrize("token", ["\xb2.x", "1\xb2.x", "\u0661\u0662.abc", "²²²"])
def test_tokens_with_lookalike_digits_are_401(device, token):
    answer = post_json(Client(), UPLOADS, UPLOAD, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert answer.status_code == 401


def test_an_unknown_api_path_is_a_json_404_whatever_debug_says(shards, settings):
    settings.DEBUG = True
    answer = Client().get("/api/v1/no/such/thing")
    assert answer.status_code == 404
    assert answer["Content-Type"].startswith("application/json")
    assert "URLconf" not in answer.content.decode()


def test_an_internal_error_is_a_json_500_without_a_traceback(device, settings, monkeypatch):
    """A failing dependency (here: command delivery) is our fault: logged, not shown."""
    import api.device_routes

    def broken(device_id: int):
        raise RuntimeError("secret internals")

    settings.DEBUG = True
    monkeypatch.setattr(api.device_routes, "deliver_pending", broken)
    client = Client(raise_request_exception=False)
    answer = client.get("/api/v1/device/commands", **bearer(device.token))
    assert answer.status_code == 500
    assert answer.json() == {"detail": "internal error; it has been logged"}
    assert "Traceback" not in answer.content.decode()


def test_a_body_less_post_needs_no_content_type_and_a_form_post_is_415(root_client, device):
    from shards.commands import create_command

    queued = create_command(device.device.pk, "reboot")
    form = root_client.post(f"/api/v1/commands/{queued.pk}/cancel", {"x": "1"})  # multipart
    assert form.status_code == 415
    bare = root_client.generic("POST", f"/api/v1/commands/{queued.pk}/cancel")  # no body at all
    assert bare.status_code == 200 and bare.json()["status"] == "cancelled"


@pytest.mark.parametrize("query", ["end=0001-01-01T00:00:00Z", "start=0001-01-01T00:00:00Z"])
def test_a_series_at_the_edge_of_the_calendar_is_400(device, root_client, query):
    answer = root_client.get(f"/api/v1/devices/{device.device.pk}/series?{query}")
    assert answer.status_code == 400
    assert "year" in answer.json()["detail"]
