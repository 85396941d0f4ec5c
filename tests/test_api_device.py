"""The device API in-process: enrolment, uploads, receipts, commands, and refusals."""

import pytest
from django.test import Client

from core.credentials import revoke_tokens
from core.models import Device, Placement
from core.provisioning import create_provisioning_key
from shards.commands import create_command
from shards.models import Command, Upload
from tests.api_helpers import bearer, post_json, reading
from tests.factories import make_device
from tests.querylog import queries_by_alias


@pytest.fixture
def client() -> Client:
    return Client()


@pytest.fixture
def fleet_key(shards) -> str:
    return create_provisioning_key("test-fleet")


def test_enrol_with_the_fleet_key_then_upload(client, fleet_key):
    answer = post_json(
        client, "/api/v1/device/enroll", {"provisioning_key": fleet_key, "serial": "SN-1"}
    )
    assert answer.status_code == 201, answer.content
    device_id, token = answer.json()["device_id"], answer.json()["token"]
    assert Placement.objects.get(device_id=device_id).shard_id in {"shard_1", "shard_2"}

    upload = post_json(
        client,
        "/api/v1/device/uploads",
        {"batch_id": "b-1", "readings": [reading()]},
        **bearer(token),
    )
    assert upload.status_code == 202, upload.content
    assert Upload.objects.for_device(device_id).count() == 1


def test_enrolled_serial_is_refused_until_an_admin_releases_it(client, fleet_key):
    first = post_json(
        client, "/api/v1/device/enroll", {"provisioning_key": fleet_key, "serial": "SN-2"}
    )
    old_token = first.json()["token"]
    again = post_json(
        client, "/api/v1/device/enroll", {"provisioning_key": fleet_key, "serial": "SN-2"}
    )
    assert again.status_code == 409
    assert "release" in again.json()["detail"]

    Device.objects.filter(serial="SN-2").update(reenroll_allowed=True)
    released = post_json(
        client, "/api/v1/device/enroll", {"provisioning_key": fleet_key, "serial": "SN-2"}
    )
    assert released.status_code == 201
    assert released.json()["device_id"] == first.json()["device_id"]
    assert client.get("/api/v1/device/commands", **bearer(old_token)).status_code == 401
    assert (
        client.get("/api/v1/device/commands", **bearer(released.json()["token"])).status_code == 200
    )


def test_enrolment_with_a_wrong_key_is_401_and_creates_nothing(client, fleet_key):
    answer = post_json(
        client, "/api/v1/device/enroll", {"provisioning_key": "nope", "serial": "SN-3"}
    )
    assert answer.status_code == 401
    assert not Device.objects.filter(serial="SN-3").exists()


def test_same_batch_id_returns_the_same_upload_and_writes_nothing_twice(client, shards):
    new = make_device(shard="shard_2")
    body = {"batch_id": "again", "readings": [reading(), reading(metric="rpm", value=3)]}
    first = post_json(client, "/api/v1/device/uploads", body, **bearer(new.token))
    second = post_json(client, "/api/v1/device/uploads", body, **bearer(new.token))
    assert first.status_code == second.status_code == 202
    assert first.json()["upload_id"] == second.json()["upload_id"]
    assert Upload.objects.for_device(new.device).count() == 1


def test_upload_answer_carries_waiting_commands_once(client, shards):
    new = make_device(shard="shard_1")
    command = create_command(new.device.pk, "reboot", {"delay": 5})
    first = post_json(
        client,
        "/api/v1/device/uploads",
        {"batch_id": "1", "readings": [reading()]},
        **bearer(new.token),
    )
    assert [c["id"] for c in first.json()["commands"]] == [command.pk]
    assert first.json()["commands"][0]["args"] == {"delay": 5}
    second = post_json(
        client,
        "/api/v1/device/uploads",
        {"batch_id": "2", "readings": [reading()]},
        **bearer(new.token),
    )
    assert second.json()["commands"] == []
    stored = Command.objects.for_device(new.device).get(pk=command.pk)
    assert (stored.status, stored.attempts) == ("sent", 1)


def test_command_lifecycle_through_the_device_endpoints(client, shards):
    new = make_device(shard="shard_2")
    command = create_command(new.device.pk, "calibrate")
    polled = client.get("/api/v1/device/commands", **bearer(new.token)).json()["commands"]
    assert [c["id"] for c in polled] == [command.pk]
    path = f"/api/v1/device/commands/{command.pk}/result"
    assert (
        post_json(client, path, {"status": "acknowledged"}, **bearer(new.token)).status_code == 200
    )
    done = post_json(
        client, path, {"status": "succeeded", "result": {"offset": 0.2}}, **bearer(new.token)
    )
    assert done.status_code == 200 and done.json()["status"] == "succeeded"
    again = post_json(client, path, {"status": "failed"}, **bearer(new.token))
    assert again.status_code == 409
    stored = Command.objects.for_device(new.device).get(pk=command.pk)
    assert (stored.status, stored.result) == ("succeeded", {"offset": 0.2})


def test_expired_commands_are_not_delivered(client, shards):
    new = make_device()
    command = create_command(new.device.pk, "late", expires_in=60)
    Command.objects.for_device(new.device).filter(pk=command.pk).update(
        expires_at="2020-01-01T00:00:00Z"
    )
    assert client.get("/api/v1/device/commands", **bearer(new.token)).json()["commands"] == []
    assert Command.objects.for_device(new.device).get(pk=command.pk).status == "expired"


def test_receipt_shows_status_and_belongs_to_its_device_only(client, shards):
    owner = make_device(shard="shard_1")
    other = make_device(shard="shard_1")
    upload_id = post_json(
        client,
        "/api/v1/device/uploads",
        {"batch_id": "r", "readings": [reading()] * 3},
        **bearer(owner.token),
    ).json()["upload_id"]
    receipt = client.get(f"/api/v1/device/uploads/{upload_id}", **bearer(owner.token))
    assert receipt.status_code == 200
    assert receipt.json()["upload_id"] == upload_id and receipt.json()["readings"] == 3
    assert receipt.json()["status"] in {"staged", "imported"}
    assert (
        client.get(f"/api/v1/device/uploads/{upload_id}", **bearer(other.token)).status_code == 404
    )


def test_the_receipt_says_what_was_stored_and_what_was_a_duplicate(client, shards):
    """The first reading of a (metric, ts) wins: earlier in the batch, or an earlier batch."""
    from shards.ingest import import_upload_now
    from shards.models import Reading

    device = make_device(shard="shard_2")
    t0, t1, t2 = "2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z"

    def upload_and_import(batch_id: str, readings: list[dict]) -> dict:
        body = {"batch_id": batch_id, "readings": readings}
        upload_id = post_json(
            client, "/api/v1/device/uploads", body, **bearer(device.token)
        ).json()["upload_id"]
        staged = client.get(f"/api/v1/device/uploads/{upload_id}", **bearer(device.token))
        if staged.json()["status"] == "staged":
            assert staged.json()["stored"] is None and staged.json()["duplicates"] is None
        import_upload_now(device.device.pk, upload_id)
        return client.get(f"/api/v1/device/uploads/{upload_id}", **bearer(device.token)).json()

    first = upload_and_import(
        "a", [reading(t0, value=1.0), reading(t0, value=2.0), reading(t1, value=3.0)]
    )
    assert (first["readings"], first["stored"], first["duplicates"]) == (3, 2, 1)
    second = upload_and_import("b", [reading(t0, value=9.0), reading(t2, value=4.0)])
    assert (second["readings"], second["stored"], second["duplicates"]) == (2, 1, 1)
    stored = dict(Reading.objects.for_device(device.device).values_list("value", "ts"))
    assert sorted(stored) == [1.0, 3.0, 4.0]


@pytest.mark.parametrize(
    "token",
    ["", "garbage", "1.nope", "999999999.abc", "x" * 300],
    ids=["empty", "garbage", "wrong", "unknown", "long"],
)
def test_bad_tokens_are_401(client, shards, token):
    make_device()
    answer = post_json(
        client,
        "/api/v1/device/uploads",
        {"batch_id": "b", "readings": [reading()]},
        **bearer(token),
    )
    assert answer.status_code == 401


def test_revoked_token_is_401_at_once_on_this_node(client, shards):
    new = make_device()
    assert client.get("/api/v1/device/commands", **bearer(new.token)).status_code == 200
    revoke_tokens(new.device)
    assert client.get("/api/v1/device/commands", **bearer(new.token)).status_code == 401


BAD_BATCHES = {
    "not json": ("{not json", "body"),
    "readings missing": ({"batch_id": "b"}, "readings"),
    "empty readings": ({"batch_id": "b", "readings": []}, "readings"),
    "value is a string": (
        {"batch_id": "b", "readings": [reading(), {**reading(), "value": "hot"}]},
        "readings[1].value",
    ),
    "value is a bool": (
        {"batch_id": "b", "readings": [{**reading(), "value": True}]},
        "readings[0].value",
    ),
    "value is NaN": (
        '{"batch_id": "b", "readings": [{"ts": 1767225600, "metric": "t", "value": NaN}]}',
        "readings[0].value",
    ),
    "value is Infinity": (
        '{"batch_id": "b", "readings": [{"ts": 1767225600, "metric": "t", "value": Infinity}]}',
        "readings[0].value",
    ),
    "ts in 1970": ({"batch_id": "b", "readings": [{**reading(), "ts": 0}]}, "readings[0].ts"),
    "ts far future": (
        {"batch_id": "b", "readings": [{**reading(), "ts": "2999-01-01T00:00:00Z"}]},
        "readings[0].ts",
    ),
    "ts not a date": (
        {"batch_id": "b", "readings": [{**reading(), "ts": "yesterday"}]},
        "readings[0].ts",
    ),
    "bad metric": (
        {"batch_id": "b", "readings": [reading(metric="bad metric!")]},
        "readings[0].metric",
    ),
    "long metric": (
        {"batch_id": "b", "readings": [reading(metric="m" * 65)]},
        "readings[0].metric",
    ),
    "unknown field": (
        {"batch_id": "b", "readings": [{**reading(), "unit": "C"}]},
        "readings[0].unit",
    ),
    "batch id empty": ({"batch_id": "", "readings": [reading()]}, "batch_id"),
    "batch id spaces": ({"batch_id": "a b", "readings": [reading()]}, "batch_id"),
    "too many readings": ({"batch_id": "b", "readings": [reading()] * 5001}, "readings"),
    "body is a list": ([reading()], "body"),
}


@pytest.mark.parametrize(("body", "field"), BAD_BATCHES.values(), ids=BAD_BATCHES.keys())
def test_bad_batches_are_400_naming_the_field_and_write_nothing(client, shards, body, field):
    new = make_device()
    answer = post_json(client, "/api/v1/device/uploads", body, **bearer(new.token))
    assert answer.status_code == 400, answer.content
    fields = [e["field"] for e in answer.json()["errors"]]
    assert any(f.startswith(field) for f in fields), fields
    assert field in answer.json()["detail"]
    assert Upload.objects.for_device(new.device).count() == 0


def test_oversized_body_is_413_and_writes_nothing(client, shards, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    new = make_device()
    body = {"batch_id": "big", "readings": [reading(value=i) for i in range(400)]}
    answer = post_json(client, "/api/v1/device/uploads", body, **bearer(new.token))
    assert answer.status_code == 413
    assert Upload.objects.for_device(new.device).count() == 0


def test_steady_state_upload_makes_zero_directory_queries(client, shards):
    new = make_device(shard="shard_2")
    post_json(
        client,
        "/api/v1/device/uploads",
        {"batch_id": "warm", "readings": [reading()]},
        **bearer(new.token),
    )
    with queries_by_alias() as log:
        answer = post_json(
            client,
            "/api/v1/device/uploads",
            {"batch_id": "hot", "readings": [reading()]},
            **bearer(new.token),
        )
        client.get("/api/v1/device/commands", **bearer(new.token))
    assert answer.status_code == 202
    assert log.count("default") == 0
    assert log.aliases() == {"shard_2"}


def test_an_upload_asks_for_waiting_commands_in_its_own_statement(client, shards):
    """Most uploads find no command waiting: learning that costs no statement of its own."""
    new = make_device(shard="shard_2")

    def upload(batch: str):
        body = {"batch_id": batch, "readings": [reading()]}
        return post_json(client, "/api/v1/device/uploads", body, **bearer(new.token))

    upload("warm")
    with queries_by_alias() as log:
        answer = upload("quiet")
    assert answer.status_code == 202 and answer.json()["commands"] == []
    # The fence's lock, then the upload's INSERT (which also asks for open commands).
    assert len(log["shard_2"]) == 2, log["shard_2"]

    command = create_command(new.device.pk, "reboot")
    answer = upload("busy")
    assert [c["id"] for c in answer.json()["commands"]] == [command.pk]
    assert Command.objects.for_device(new.device).get(pk=command.pk).status == "sent"
    retried = upload("busy")  # the same batch again: already staged, commands asked anew
    assert retried.json()["upload_id"] == answer.json()["upload_id"]


def test_nul_characters_are_400_not_500(client, shards, fleet_key):
    new = make_device()
    answer = post_json(
        client,
        "/api/v1/device/enroll",
        {"provisioning_key": fleet_key, "serial": "SN-N", "name": "a\u0000b"},
    )
    assert answer.status_code == 400 and "name" in answer.json()["detail"]
    command = create_command(new.device.pk, "x")
    path = f"/api/v1/device/commands/{command.pk}/result"
    answer = post_json(
        client, path, {"status": "succeeded", "result": {"k\u0000": 1}}, **bearer(new.token)
    )
    assert answer.status_code == 400 and "result" in answer.json()["detail"]
    assert Command.objects.for_device(new.device).get(pk=command.pk).status == "queued"


def test_request_log_names_device_shard_and_duration(client, shards, caplog):
    new = make_device(shard="shard_2")
    with caplog.at_level("INFO", logger="fleet.requests"):
        client.get("/api/v1/device/commands", **bearer(new.token))
    line = next(r.getMessage() for r in caplog.records if r.name == "fleet.requests")
    assert line.startswith("GET /api/v1/device/commands 200 ")
    assert f"device={new.device.pk} shard=shard_2" in line and "ms " in line
