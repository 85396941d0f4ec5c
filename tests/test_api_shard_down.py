"""A shard that is down: its devices get 503 with Retry-After; other shards carry on."""

import pytest
from django.test import Client

from cluster.ports import free_port
from cluster.postgres import PostgresInstance
from core import local_cluster
from routers.registry import unregister_shard_connection
from shards.models import Upload
from shards.registration import ShardLocation, register_shard
from tests.api_helpers import bearer, post_json, reading
from tests.factories import make_device

pytestmark = pytest.mark.slow


@pytest.fixture
def doomed_shard(shards):
    test_dir = local_cluster.VAR_DIR / "test"
    instance = PostgresInstance("shard_doomed", free_port(), test_dir / "pg", test_dir / "log")
    instance.destroy()
    instance.ensure_running()
    instance.create_database("test_fleet_shard_doomed")
    register_shard(
        "shard_doomed",
        ShardLocation(host="127.0.0.1", port=instance.port, db_name="test_fleet_shard_doomed"),
    )
    yield instance
    unregister_shard_connection("shard_doomed")
    instance.destroy()


def test_devices_of_a_stopped_shard_get_503_and_others_202(doomed_shard):
    client = Client()
    victim = make_device(shard="shard_doomed")
    bystander = make_device(shard="shard_1")
    body = {"batch_id": "before", "readings": [reading()]}
    assert (
        post_json(client, "/api/v1/device/uploads", body, **bearer(victim.token)).status_code == 202
    )

    doomed_shard.stop()
    for batch in ("during-1", "during-2"):
        body = {"batch_id": batch, "readings": [reading()]}
        answer = post_json(client, "/api/v1/device/uploads", body, **bearer(victim.token))
        assert answer.status_code == 503, answer.content
        assert int(answer["Retry-After"]) > 0
        assert "retry" in answer.json()["detail"]
        other = post_json(client, "/api/v1/device/uploads", body, **bearer(bystander.token))
        assert other.status_code == 202
    assert client.get("/api/v1/device/commands", **bearer(victim.token)).status_code == 503

    doomed_shard.ensure_running()
    body = {"batch_id": "after", "readings": [reading()]}
    assert (
        post_json(client, "/api/v1/device/uploads", body, **bearer(victim.token)).status_code == 202
    )
    stored = set(Upload.objects.for_device(victim.device).values_list("batch_id", flat=True))
    assert stored == {"before", "after"}


def test_devices_enrol_on_a_reachable_shard_while_the_emptiest_is_down(dead_shard):
    """shard_dead has no devices, so it is first in line for every new one."""
    from core.models import Placement
    from core.provisioning import create_provisioning_key
    from routers.placement import choose_shard_for_new_device

    make_device(shard="shard_1")
    make_device(shard="shard_2")
    assert choose_shard_for_new_device() == dead_shard
    key = create_provisioning_key("factory")
    client = Client()
    for n in range(4):
        body = {"provisioning_key": key, "serial": f"SN-down-{n}"}
        answer = post_json(client, "/api/v1/device/enroll", body)
        assert answer.status_code == 201, answer.content
        device_id = answer.json()["device_id"]
        assert Placement.objects.get(device_id=device_id).shard_id in {"shard_1", "shard_2"}
        upload = {"batch_id": "b", "readings": [reading()]}
        token = answer.json()["token"]
        assert (
            post_json(client, "/api/v1/device/uploads", upload, **bearer(token)).status_code == 202
        )
    assert not Placement.objects.filter(shard_id=dead_shard).exists()
