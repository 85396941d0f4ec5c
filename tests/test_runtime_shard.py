"""A shard registered while this process runs is used by it, without a restart.

The test starts a real third PostgreSQL server, adds a shard database on it from a
separate `manage.py add_shard --create-db` process (as an operator would), and then checks
that this process lists it within the registry's refresh time and places a new
device's writes on it.
"""

import subprocess
import sys
import time

import psycopg2
import pytest
from django.conf import settings

from cluster.ports import free_port
from cluster.postgres import PostgresInstance
from core import local_cluster
from routers.fanout import fan_out
from routers.registry import serving_shards, unregister_shard_connection
from shards.models import Reading
from tests.factories import make_device, reading_times
from tests.process_env import child_process_env
from tests.querylog import queries_by_alias

pytestmark = pytest.mark.slow

DB_NAME = "test_fleet_shard_3"


@pytest.fixture
def third_instance():
    test_dir = local_cluster.VAR_DIR / "test"
    instance = PostgresInstance("shard_3", free_port(), test_dir / "pg", test_dir / "log")
    instance.destroy()  # whatever an interrupted run left behind
    instance.ensure_running()  # an empty server: add_shard --create-db makes the database
    yield instance
    unregister_shard_connection("shard_3")
    instance.destroy()


def test_third_shard_registered_at_run_time_receives_new_devices(shards, third_instance):
    make_device(shard="shard_1")
    make_device(shard="shard_2")
    assert "shard_3" not in serving_shards()

    proc = subprocess.run(
        [sys.executable, "manage.py", "add_shard", "shard_3", "--host", "127.0.0.1",
         "--port", str(third_instance.port), "--db-name", DB_NAME, "--create-db"],
        cwd=local_cluster.REPO_ROOT, env=child_process_env(), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"database {DB_NAME} created" in proc.stdout
    registered, replication = proc.stdout.splitlines()[-2:]
    assert "registered shard_3" in registered
    assert replication == f"replication: primary 127.0.0.1:{third_instance.port}, no standby"

    # Nobody tells this process: its registry refresh finds the shard by itself.
    deadline = time.monotonic() + settings.SHARD_REGISTRY_TTL + 5
    while "shard_3" not in serving_shards():
        assert time.monotonic() < deadline, "shard_3 not picked up within the registry TTL"
        time.sleep(0.2)

    new = make_device()  # least loaded: the empty new shard
    assert new.shard == "shard_3"
    with queries_by_alias() as log:
        Reading.objects.for_device(new.device).bulk_create(
            Reading(device_id=new.device.pk, metric="temp", ts=ts, value=1.5)
            for ts in reading_times(5)
        )
    assert log.aliases() == {"shard_3"}

    # The rows are really in the new instance, seen from outside Django.
    with psycopg2.connect(
        host="127.0.0.1", port=third_instance.port, dbname=DB_NAME,
        user=third_instance.user, password=third_instance.password,
    ) as raw, raw.cursor() as cursor:  # fmt: skip
        cursor.execute("SELECT count(*) FROM shards_reading WHERE device_id = %s", [new.device.pk])
        assert cursor.fetchone()[0] == 5

    totals = fan_out(lambda alias: Reading.objects.on_shard(alias).count())
    assert totals == {"shard_1": 0, "shard_2": 0, "shard_3": 5}
