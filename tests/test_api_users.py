"""Web-user endpoints, and the access matrix: device A vs B, user X vs Y, anonymous."""

import pytest
from django.test import Client

from core.models import DeviceAccess, User
from shards.commands import create_command
from shards.models import Command, LatestValue, Reading
from tests.api_helpers import bearer, post_json
from tests.factories import T0, make_device, make_user, reading_times
from tests.querylog import queries_by_alias


@pytest.fixture
def world(shards):
    """Users X and Y, staff S; X owns a1 (shard_1) and a2 (shard_2), Y owns b1 (shard_2)."""
    x = User.objects.create_user("x", password="pw-x")
    y = User.objects.create_user("y", password="pw-y")
    # Operators see and command every device by permission; staff alone grants nothing.
    staff = make_user("s", "core.view_device", "core.command_device", is_staff=True)
    a1 = make_device(shard="shard_1", users=[x])
    a2 = make_device(shard="shard_2", users=[x])
    b1 = make_device(shard="shard_2", users=[y])
    for device in (a1.device, a2.device, b1.device):
        Reading.objects.for_device(device).bulk_create(
            Reading(device_id=device.pk, metric="temp", ts=ts, value=float(i))
            for i, ts in enumerate(reading_times(5))
        )
        LatestValue.objects.for_device(device).create(
            device_id=device.pk, metric="temp", ts=T0, value=4.0
        )
    return {"x": x, "y": y, "staff": staff, "a1": a1, "a2": a2, "b1": b1}


def cancel(client: Client, command_id: int):
    """POST /commands/{id}/cancel as API clients send it: no body."""
    return client.generic("POST", f"/api/v1/commands/{command_id}/cancel")


def login(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_my_devices_lists_only_mine_across_shards(world):
    answer = login(world["x"]).get("/api/v1/devices")
    assert answer.status_code == 200
    listed = {d["device_id"]: d for d in answer.json()["devices"]}
    assert set(listed) == {world["a1"].device.pk, world["a2"].device.pk}
    assert {d["shard"] for d in listed.values()} == {"shard_1", "shard_2"}
    assert listed[world["a1"].device.pk]["latest"]["temp"]["value"] == 4.0
    assert answer.json()["count"] == 2


def test_staff_see_every_device(world):
    answer = login(world["staff"]).get("/api/v1/devices")
    assert answer.json()["count"] == 3


def test_device_list_queries_each_shard_a_constant_number_of_times(world):
    for _ in range(20):
        make_device(users=[world["x"]])
    client = login(world["x"])
    with queries_by_alias() as log:
        answer = client.get("/api/v1/devices?limit=500")
    assert answer.json()["count"] == 22
    # Per-shard work runs in fan-out threads; this thread only touches the directory.
    assert log.aliases() <= {"default"}
    # Session, user, the user's and their groups' permissions, a page of devices, the
    # count, their placements: the same seven however many devices there are.
    assert log.count("default") == 7, log["default"]


def test_readings_over_a_range(world):
    device = world["a1"].device
    client = login(world["x"])
    answer = client.get(
        f"/api/v1/devices/{device.pk}/readings",
        {"metric": "temp", "start": "2026-01-01T00:00:01Z", "end": "2026-01-01T00:00:04Z"},
    )
    assert answer.status_code == 200
    assert [r["value"] for r in answer.json()["readings"]] == [1.0, 2.0, 3.0]
    limited = client.get(f"/api/v1/devices/{device.pk}/readings", {"limit": 2}).json()
    assert len(limited["readings"]) == 2 and limited["truncated"]
    bad = client.get(
        f"/api/v1/devices/{device.pk}/readings", {"start": "2026-02-01", "end": "2026-01-01"}
    )
    assert bad.status_code == 400 and "start must be before end" in bad.json()["detail"]


def test_send_list_and_cancel_a_command(world):
    device = world["a2"].device
    client = login(world["x"])
    sent = post_json(
        client, f"/api/v1/devices/{device.pk}/commands", {"name": "reboot", "expires_in": 600}
    )
    assert sent.status_code == 201, sent.content
    command_id = sent.json()["id"]
    assert Command.objects.for_device(device).get(pk=command_id).created_by_id == world["x"].pk
    listed = client.get(f"/api/v1/devices/{device.pk}/commands").json()["commands"]
    assert [c["id"] for c in listed] == [command_id]
    cancelled = cancel(client, command_id)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancel(client, command_id).status_code == 409
    assert (
        client.get("/api/v1/device/commands", **bearer(world["a2"].token)).json()["commands"] == []
    )


def test_user_without_command_right_gets_403(world):
    DeviceAccess.objects.filter(user=world["x"], device=world["a1"].device).update(
        can_command=False
    )
    answer = post_json(
        login(world["x"]), f"/api/v1/devices/{world['a1'].device.pk}/commands", {"name": "x"}
    )
    assert answer.status_code == 403
    assert Command.objects.for_device(world["a1"].device).count() == 0


def test_bad_command_bodies_are_400(world):
    path = f"/api/v1/devices/{world['a1'].device.pk}/commands"
    client = login(world["x"])
    for body, field in [
        ({}, "name"),
        ({"name": "bad name!"}, "name"),
        ({"name": "x", "expires_in": 0}, "expires_in"),
        ({"name": "x", "args": [1, 2]}, "args"),
    ]:
        answer = post_json(client, path, body)
        assert answer.status_code == 400, (body, answer.content)
        assert field in answer.json()["detail"]
    assert Command.objects.for_device(world["a1"].device).count() == 0


def test_csrf_is_enforced_for_session_writes(world):
    client = Client(enforce_csrf_checks=True)
    client.force_login(world["x"])
    answer = post_json(
        client, f"/api/v1/devices/{world['a1'].device.pk}/commands", {"name": "reboot"}
    )
    assert answer.status_code == 403
    assert Command.objects.for_device(world["a1"].device).count() == 0


def other_users_paths(world) -> list[tuple[str, str, dict | None]]:
    theirs = world["b1"].device.pk
    command = create_command(theirs, "secret-op")
    return [
        ("get", f"/api/v1/devices/{theirs}/readings", None),
        ("get", f"/api/v1/devices/{theirs}/commands", None),
        ("post", f"/api/v1/devices/{theirs}/commands", {"name": "x"}),
        ("post", f"/api/v1/commands/{command.pk}/cancel", None),
    ]


def test_another_users_device_and_command_are_404(world):
    client = login(world["x"])
    for method, path, body in other_users_paths(world):
        answer = post_json(client, path, body or {}) if method == "post" else client.get(path)
        assert answer.status_code == 404, (path, answer.content)
        assert b"secret-op" not in answer.content
    assert Command.objects.for_device(world["b1"].device).filter(status="queued").count() == 1


def test_anonymous_gets_401_everywhere(world):
    client = Client()
    for method, path, body in [*other_users_paths(world), ("get", "/api/v1/devices", None)]:
        answer = post_json(client, path, body or {}) if method == "post" else client.get(path)
        assert answer.status_code == 401, path


# a1 lives on shard_1, a2 on shard_2 beside b1: a lookup that forgot its device filter
# would still miss across shards, so every cross-device check runs on the same shard too.
@pytest.mark.parametrize("mine", ["a1", "a2"], ids=["other-shard", "same-shard"])
def test_a_device_cannot_use_user_endpoints_or_another_devices_command(world, mine):
    a_token, b_command = world[mine].token, create_command(world["b1"].device.pk, "theirs")
    client = Client()
    assert client.get("/api/v1/devices", **bearer(a_token)).status_code == 401
    for status in ("acknowledged", "succeeded", "failed"):
        answer = post_json(
            client,
            f"/api/v1/device/commands/{b_command.pk}/result",
            {"status": status, "result": {"stolen": True}},
            **bearer(a_token),
        )
        assert answer.status_code == 404, answer.content
    unchanged = Command.objects.for_device(world["b1"].device).get(pk=b_command.pk)
    assert (unchanged.status, unchanged.result) == ("queued", None)
    # Nor is it delivered to the wrong device.
    polled = client.get("/api/v1/device/commands", **bearer(a_token)).json()["commands"]
    assert b_command.pk not in [c["id"] for c in polled]


@pytest.mark.parametrize("mine", ["a1", "a2"], ids=["other-shard", "same-shard"])
def test_a_device_cannot_read_another_devices_upload_receipt(world, mine):
    client = Client()
    theirs = post_json(
        client,
        "/api/v1/device/uploads",
        {
            "batch_id": "b-1",
            "readings": [{"ts": "2026-01-01T00:00:00Z", "metric": "t", "value": 1}],
        },
        **bearer(world["b1"].token),
    ).json()["upload_id"]
    answer = client.get(f"/api/v1/device/uploads/{theirs}", **bearer(world[mine].token))
    assert answer.status_code == 404
    assert (
        client.get(f"/api/v1/device/uploads/{theirs}", **bearer(world["b1"].token)).status_code
        == 200
    )


# --- permissions: staff alone grants nothing ----------------------------------------------


def device_paths(device_id: int, command_id: int) -> list[tuple[str, str, dict | None]]:
    return [
        ("get", f"/api/v1/devices/{device_id}/readings", None),
        ("get", f"/api/v1/devices/{device_id}/series", None),
        ("get", f"/api/v1/devices/{device_id}/commands", None),
        ("post", f"/api/v1/devices/{device_id}/commands", {"name": "x"}),
        ("post", f"/api/v1/commands/{command_id}/cancel", None),
    ]


def test_staff_without_permissions_see_and_command_nothing(world):
    bare = make_user("bare", is_staff=True)
    client = login(bare)
    assert client.get("/api/v1/devices").json()["count"] == 0
    device = world["b1"].device
    command = create_command(device.pk, "theirs")
    for method, path, body in device_paths(device.pk, command.pk):
        answer = post_json(client, path, body or {}) if method == "post" else client.get(path)
        assert answer.status_code == 404, (path, answer.content)
    assert Command.objects.for_device(device).get(pk=command.pk).status == "queued"
    assert Command.objects.for_device(device).count() == 1


def test_the_view_permission_sees_every_device_but_commands_none(world):
    viewer = make_user("viewer", "core.view_device")
    client = login(viewer)
    assert client.get("/api/v1/devices").json()["count"] == 3
    device = world["b1"].device
    command = create_command(device.pk, "theirs")
    for method, path, body in device_paths(device.pk, command.pk):
        answer = post_json(client, path, body or {}) if method == "post" else client.get(path)
        assert answer.status_code == (403 if method == "post" else 200), (path, answer.content)
    assert Command.objects.for_device(device).get(pk=command.pk).status == "queued"


def test_another_users_command_is_answered_as_an_unknown_one(world):
    theirs = create_command(world["b1"].device.pk, "theirs")  # on shard_2, beside x's a2
    unknown = theirs.pk + 1_000_000
    client = login(world["x"])
    foreign = cancel(client, theirs.pk)
    missing = cancel(client, unknown)
    assert (foreign.status_code, foreign.json()) == (missing.status_code, missing.json())
    assert foreign.status_code == 404


def test_commands_keep_working_while_another_shard_is_down(world, dead_shard):
    mine = world["a1"].device
    client = login(world["x"])
    sent = post_json(client, f"/api/v1/devices/{mine.pk}/commands", {"name": "reboot"})
    assert sent.status_code == 201
    cancelled = cancel(client, sent.json()["id"])
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    # An id no reachable shard knows may live on the dead one: retry later, not a 404.
    unknown = cancel(client, sent.json()["id"] + 1_000_000)
    assert unknown.status_code == 503 and unknown["Retry-After"]


def test_openapi_schema_and_docs_are_served(shards):
    client = Client()
    schema = client.get("/api/v1/openapi.json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in [
        "/api/v1/device/enroll",
        "/api/v1/device/uploads",
        "/api/v1/devices",
        "/api/v1/commands/{command_id}/cancel",
    ]:
        assert path in paths
    assert client.get("/")["Location"] == "/devices/"  # the portal is the front page
    docs = client.get("/api/v1/docs")
    assert docs.status_code == 200 and b"openapi.json" in docs.content
