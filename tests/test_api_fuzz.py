"""Schema-driven fuzzing of every API operation: thousands of cases, no 5xx, no partial write.

Schemathesis generates requests from the OpenAPI schema (valid and invalid
ones) and sends them to the real application in-process, authenticated as a
device and as a user granted the devices. The writing operations are fuzzed once
more for a device of their own, whose stored rows must then match exactly the
uploads and commands the API acknowledged.
"""

import os
import secrets

import pytest
import schemathesis
from django.test import Client
from hypothesis import HealthCheck, given, settings

from core.models import User
from core.wsgi import application
from shards.models import Command, Upload
from tests.factories import make_device

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "250"))
schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", application)
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)


@pytest.fixture(scope="module")
def fuzz_world(django_db_setup, django_db_blocker):
    from shards.registration import register_shard
    from tests.conftest import TEST_SHARDS, location_of, truncate_all

    with django_db_blocker.unblock():
        for alias in TEST_SHARDS:
            register_shard(alias, location_of(alias), migrate=False)
        staff = User.objects.create_user("fuzzer", is_staff=True)
        devices = [make_device(shard=alias, users=[staff]) for alias in TEST_SHARDS]
        client = Client()
        client.force_login(staff)
        csrf = secrets.token_hex(16)
        world = {
            "user": staff,
            "device": devices[0],
            "headers": {"Authorization": f"Bearer {devices[0].token}", "X-CSRFToken": csrf},
            "cookies": {"sessionid": client.cookies["sessionid"].value, "csrftoken": csrf},
        }
        yield world
        truncate_all(["default", *TEST_SHARDS])


@pytest.fixture
def world(fuzz_world, django_db_blocker, settings):
    # Thousands of requests as one device from one address: without this most would be
    # 429s and the endpoints behind them unexplored (tests/test_throttle_api.py tests those).
    settings.DEVICE_RATE_LIMIT = settings.ENROLL_FAILURE_LIMIT = "off"
    settings.DEVICE_AUTH_FAILURE_LIMIT = "off"
    with django_db_blocker.unblock():
        yield fuzz_world


def send(case, device_id: int, headers: dict, cookies: dict):
    if case.path_parameters and "device_id" in case.path_parameters:
        # Random ids are 404s; access control has tests of its own (test_api_users).
        case.path_parameters["device_id"] = device_id
    response = case.call(headers=headers, cookies=cookies)
    assert response.status_code < 500, (case.method, case.path, response.text[:500])
    return response


@schema.parametrize()
@FUZZ_SETTINGS
def test_no_operation_answers_5xx(case, world):
    send(case, world["device"].device.pk, world["headers"], world["cookies"])


WRITES = [("/api/v1/device/uploads", "POST"), ("/api/v1/devices/{device_id}/commands", "POST")]


def test_stored_rows_are_exactly_the_acknowledged_ones(world, capsys):
    """Fuzzes the writing operations for a device of its own, then compares what is stored
    with what was acknowledged: nothing half-written, nothing acknowledged and lost."""
    device = make_device(shard="shard_2", users=[world["user"]])
    headers = {**world["headers"], "Authorization": f"Bearer {device.token}"}
    acknowledged: dict[str, set[int]] = {"uploads": set(), "commands": set()}

    for path, method in WRITES:

        @given(case=schema[path][method].as_strategy())
        @FUZZ_SETTINGS
        def write(case) -> None:
            response = send(case, device.device.pk, headers, world["cookies"])
            if response.status_code == 202 and case.path.endswith("/uploads"):
                acknowledged["uploads"].add(response.json()["upload_id"])
            if response.status_code == 201 and case.path.endswith("/commands"):
                acknowledged["commands"].add(response.json()["id"])

        write()

    with capsys.disabled():
        print(
            f"\nfuzzing acknowledged {len(acknowledged['uploads'])} uploads and"
            f" {len(acknowledged['commands'])} commands"
        )
    assert acknowledged["uploads"] and acknowledged["commands"]  # the fuzzing wrote at all
    uploads = Upload.objects.for_device(device.device)
    assert set(uploads.values_list("pk", flat=True)) == acknowledged["uploads"]
    for upload in uploads:
        assert upload.reading_count == len(upload.payload)
    commands = Command.objects.for_device(device.device).values_list("pk", flat=True)
    assert set(commands) == acknowledged["commands"]
