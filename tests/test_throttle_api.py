"""Rate limits on the device API: per device, wrong enrolment keys per client, per key.

Each limit answers 429 with Retry-After and a JSON detail, writes nothing, and
slows nobody but the client or device that went over it. With Redis down the
limits fail open: uploads are still accepted.
"""

import pytest
from django.test import Client

from core.models import Device
from core.provisioning import create_provisioning_key
from shards.models import Upload
from tests.api_helpers import bearer, post_json, reading
from tests.factories import make_device

UPLOADS = "/api/v1/device/uploads"
ENROLL = "/api/v1/device/enroll"
PROBER = "203.0.113.5"
NEIGHBOUR = "198.51.100.20"


def upload(device, batch_id: str, client: Client | None = None):
    body = {"batch_id": batch_id, "readings": [reading()]}
    return post_json(client or Client(), UPLOADS, body, **bearer(device.token))


def enrol(key: str, serial: str, address: str = PROBER, **meta):
    client = Client(REMOTE_ADDR=address, **meta)
    return post_json(client, ENROLL, {"provisioning_key": key, "serial": serial})


def assert_throttled(answer, longest: int) -> None:
    assert answer.status_code == 429, answer.content
    assert answer.json()["detail"]
    assert 1 <= int(answer["Retry-After"]) <= longest


def test_a_device_over_its_rate_gets_429_and_other_devices_do_not(shards, settings):
    settings.DEVICE_RATE_LIMIT = "3/minute"
    noisy, quiet = make_device(shard="shard_1"), make_device(shard="shard_1")
    for n in range(3):
        assert upload(noisy, f"b-{n}").status_code == 202
    refused = upload(noisy, "b-3")
    assert_throttled(refused, 60)
    assert "this device" in refused.json()["detail"]
    assert_throttled(Client().get("/api/v1/device/commands", **bearer(noisy.token)), 60)
    assert Upload.objects.for_device(noisy.device).count() == 3
    assert upload(quiet, "b-0").status_code == 202


def test_the_device_limit_is_in_the_openapi_schema(shards):
    schema = Client().get("/api/v1/openapi.json").json()
    assert "429" in schema["paths"]["/api/v1/device/uploads"]["post"]["responses"]


def test_uploads_are_accepted_while_redis_is_down(shards, settings):
    settings.DEVICE_RATE_LIMIT = "1/minute"
    device = make_device(shard="shard_2")
    assert upload(device, "b-0").status_code == 202
    assert upload(device, "b-1").status_code == 429  # the limit bites while Redis is up

    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"},
    }
    for n in range(2, 5):
        assert upload(device, f"b-{n}").status_code == 202
    assert Upload.objects.for_device(device.device).count() == 4


@pytest.fixture
def fleet_key(shards) -> str:
    return create_provisioning_key("throttle-test")


def test_wrong_keys_are_throttled_per_client_whatever_key_comes_next(fleet_key, settings):
    settings.ENROLL_FAILURE_LIMIT = "3/hour"
    for n in range(3):
        assert enrol("fleet_guess", f"SN-probe-{n}").status_code == 401
    refused = enrol(fleet_key, "SN-probe-right")
    assert_throttled(refused, 3600)
    assert not Device.objects.filter(serial="SN-probe-right").exists()
    assert enrol(fleet_key, "SN-neighbour", address=NEIGHBOUR).status_code == 201


def test_behind_haproxy_wrong_keys_count_for_the_forwarded_client(fleet_key, settings):
    settings.ENROLL_FAILURE_LIMIT = "2/hour"
    via_proxy = {"address": "127.0.0.1", "HTTP_X_FORWARDED_FOR": PROBER}
    for n in range(2):
        assert enrol("fleet_guess", f"SN-p-{n}", **via_proxy).status_code == 401
    assert enrol(fleet_key, "SN-p-right", **via_proxy).status_code == 429
    other = {"address": "127.0.0.1", "HTTP_X_FORWARDED_FOR": NEIGHBOUR}
    assert enrol(fleet_key, "SN-other", **other).status_code == 201


def test_a_direct_client_cannot_dodge_the_enrolment_throttle_with_x_forwarded_for(
    fleet_key, settings
):
    settings.ENROLL_FAILURE_LIMIT = "2/hour"
    for n in range(2):
        spoofed = {"HTTP_X_FORWARDED_FOR": f"10.9.8.{n}"}
        assert enrol("fleet_guess", f"SN-s-{n}", **spoofed).status_code == 401
    assert enrol(fleet_key, "SN-s", HTTP_X_FORWARDED_FOR="10.9.8.99").status_code == 429


def test_a_leaked_key_enrols_at_most_its_rate(fleet_key, settings):
    settings.ENROLL_KEY_RATE_LIMIT = "2/hour"
    other_key = create_provisioning_key("another-fleet")
    for n in range(2):
        assert enrol(fleet_key, f"SN-leak-{n}", address=f"192.0.2.{n}").status_code == 201
    refused = enrol(fleet_key, "SN-leak-2", address="192.0.2.9")
    assert_throttled(refused, 3600)
    assert "provisioning key" in refused.json()["detail"]
    assert not Device.objects.filter(serial="SN-leak-2").exists()
    assert enrol(other_key, "SN-other-fleet").status_code == 201


def test_a_token_prober_gets_429_and_devices_with_tokens_do_not(shards, settings):
    settings.DEVICE_AUTH_FAILURE_LIMIT = "3/minute"
    device = make_device(shard="shard_1")
    prober = Client(REMOTE_ADDR=PROBER)
    for n in range(3):
        guess = bearer(f"k3y{n}AbCdEfGhIjKl.secret")
        assert post_json(prober, UPLOADS, {"batch_id": "x"}, **guess).status_code == 401
    assert_throttled(prober.get("/api/v1/device/commands"), 60)
    # A device at the same address, with its token, is never counted or refused.
    behind_the_same_nat = Client(REMOTE_ADDR=PROBER)
    assert upload(device, "b-0", behind_the_same_nat).status_code == 202
    assert Client(REMOTE_ADDR=NEIGHBOUR).get("/api/v1/device/commands").status_code == 401
