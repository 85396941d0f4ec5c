"""The management commands, driven as an operator would, including their refusals."""

import json
import re
import uuid
from collections.abc import Iterator
from contextlib import closing
from io import StringIO

import psycopg2
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.utils import timezone
from psycopg2 import sql

from core import local_cluster
from core.credentials import device_id_for_token
from core.models import Device, DeviceCredential, Placement, Shard, User
from routers.registry import serving_shards, unregister_shard_connection
from shards.models import Reading, ShardIdentity
from tests.factories import make_device, reading_times


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_create_device_prints_a_working_token_once(shards):
    User.objects.create_user("alice")
    result = json.loads(run("create_device", "SN-1", "--user", "alice", "--json"))
    device = Device.objects.get(serial="SN-1")
    assert result["device_id"] == device.pk
    assert device_id_for_token(result["token"]) == device.pk
    assert list(device.users.values_list("username", flat=True)) == ["alice"]
    # Only a digest is stored: the secret appears nowhere in the directory.
    secret = result["token"].split(".", 1)[1]
    assert not DeviceCredential.objects.filter(digest__contains=secret).exists()
    assert secret not in DeviceCredential.objects.get(device=device).digest

    human = run("create_device", "SN-2", "--shard", "shard_2", "--pin")
    assert "placed on shard_2" in human and "cannot be shown again" in human
    assert Placement.objects.get(device__serial="SN-2").pinned


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["SN-1"], "already exists"),
        (["SN-9", "--user", "nobody"], "no such user"),
        (["SN-9", "--pin"], "--pin needs --shard"),
        (["SN-9", "--shard", "shard_77"], "not registered"),
        (["  "], "must not be empty"),
    ],
)
def test_create_device_refusals_say_what_is_wrong(shards, args, message):
    run("create_device", "SN-1")
    before = Device.objects.count()
    with pytest.raises(CommandError, match=message):
        run("create_device", *args)
    assert Device.objects.count() == before


def test_tokens_fail_when_wrong_revoked_or_expired(shards):
    new = make_device()
    key_id, secret = new.token.split(".", 1)
    assert device_id_for_token(new.token) == new.device.pk
    for bad in ["", "garbage", f"{key_id}.wrong", f"999999.{secret}", f"x.{secret}"]:
        assert device_id_for_token(bad) is None, bad
    # Any ORM update forgets the cached copy when it commits.
    DeviceCredential.objects.filter(key_id=key_id).update(expires_at=timezone.now())
    assert device_id_for_token(new.token) is None
    DeviceCredential.objects.filter(key_id=key_id).update(
        expires_at=None, revoked_at=timezone.now()
    )
    assert device_id_for_token(new.token) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Bad-Alias", "--host", "127.0.0.1", "--db-name", "x"], "lower-case"),
        (["shard_9", "--host", "127.0.0.1", "--port", "1", "--db-name", "x"], "cannot connect"),
        (
            ["shard_9", "--host", "127.0.0.1", "--port", "1", "--db-name", "x", "--create-db"],
            "cannot connect to 127.0.0.1:1/postgres",
        ),
        (["shard_9", "--host", "127.0.0.1", "--db-name", "x", "--weight", "-1"], "zero or more"),
    ],
)
def test_add_shard_refusals(shards, args, message):
    with pytest.raises(CommandError, match=message):
        run("add_shard", *args)
    assert set(Shard.objects.values_list("alias", flat=True)) == set(shards)


def test_add_shard_refuses_a_retired_alias(shards):
    Shard.objects.create(
        alias="shard_old", number=90, host="127.0.0.1", port=1, db_name="x",
        state=Shard.State.RETIRED,
    )  # fmt: skip
    with pytest.raises(CommandError, match="shard_old is retired"):
        run("add_shard", "shard_old", "--host", "127.0.0.1", "--db-name", "y")
    assert Shard.objects.get(alias="shard_old").db_name == "x"


def test_add_shard_refuses_a_database_registered_under_another_alias(shards):
    existing = Shard.objects.get(alias="shard_1")
    with pytest.raises(CommandError, match="already registered as shard_1"):
        run(
            "add_shard", "shard_copy", "--host", existing.host,
            "--port", str(existing.port), "--db-name", existing.db_name,
        )  # fmt: skip


def test_add_shard_again_updates_the_weight_and_keeps_the_number(shards):
    before = Shard.objects.get(alias="shard_2")
    out = run(
        "add_shard", "shard_2", "--host", before.host, "--port", str(before.port),
        "--db-name", before.db_name, "--weight", "250", "--no-migrate",
    )  # fmt: skip
    after = Shard.objects.get(alias="shard_2")
    assert (after.number, after.weight) == (before.number, 250)
    assert "weight 250" in out


# -- add_shard --create-db on a real server: shard_2's test instance ----------------

NEW_ALIAS = "shard_new"


def _server_login() -> dict[str, object]:
    config = connections.settings["shard_2"]
    return {
        "host": config["HOST"],
        "port": int(config["PORT"]),
        "user": config["USER"],
        "password": config["PASSWORD"],
    }


def _database_exists(name: str) -> bool:
    conn = psycopg2.connect(dbname="postgres", **_server_login())
    with closing(conn), conn.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        return cursor.fetchone() is not None


@pytest.fixture
def new_db_name(shards) -> Iterator[str]:
    """A database name nobody uses on shard_2's server; dropped (with its alias) afterwards."""
    name = f"test_fleet_new_{uuid.uuid4().hex[:12]}"
    yield name
    unregister_shard_connection(NEW_ALIAS)
    with closing(psycopg2.connect(dbname="postgres", **_server_login())) as conn:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _add_new_shard(name: str, *extra: str) -> str:
    login = _server_login()
    return run(
        "add_shard", NEW_ALIAS, "--host", str(login["host"]), "--port", str(login["port"]),
        "--db-name", name, "--create-db", *extra,
    )  # fmt: skip


def test_add_shard_create_db_makes_migrates_and_registers_a_new_database(new_db_name):
    assert not _database_exists(new_db_name)
    out = _add_new_shard(new_db_name, "--weight", "50")
    assert _database_exists(new_db_name)

    shard = Shard.objects.get(alias=NEW_ALIAS)
    assert (shard.state, shard.weight, shard.db_name) == ("active", 50, new_db_name)
    assert ShardIdentity.objects.on_shard(NEW_ALIAS).get().number == shard.number
    assert Reading.objects.on_shard(NEW_ALIAS).count() == 0  # migrated: the table exists
    assert NEW_ALIAS in serving_shards()

    # Each step is reported as it happens, in order, then one final line.
    steps = [
        "creating database",
        f"database {new_db_name} created",
        "connecting to",
        "migrating",
        "stamping",
        f"registered {NEW_ALIAS} (number {shard.number}, active, weight 50)",
        "replication: primary 127.0.0.1:",  # the server behind the pooler; no standby here
    ]
    lines = out.splitlines()
    assert len(lines) == len(steps), out
    for line, start in zip(lines, steps, strict=True):
        assert line.startswith(start), out


def test_add_shard_json_is_one_object_and_an_existing_database_is_fine(new_db_name):
    first = json.loads(_add_new_shard(new_db_name, "--json"))
    login = _server_login()
    replication = first.pop("replication")
    assert replication["standbys"] == [] and replication["in_recovery"] is False
    assert first == {
        "alias": NEW_ALIAS,
        "number": Shard.objects.get(alias=NEW_ALIAS).number,
        "state": "active",
        "weight": 100,
        "host": login["host"],
        "port": login["port"],
        "db_name": new_db_name,
        "created_database": True,
    }
    again = json.loads(_add_new_shard(new_db_name, "--json", "--weight", "7"))
    assert again == {**first, "weight": 7, "created_database": False, "replication": replication}


def test_add_shard_refusal_creates_no_database(new_db_name):
    login = _server_login()
    with pytest.raises(CommandError, match="lower-case"):
        run(
            "add_shard", "Bad-Alias", "--host", str(login["host"]), "--port", str(login["port"]),
            "--db-name", new_db_name, "--create-db",
        )  # fmt: skip
    assert not _database_exists(new_db_name)


def test_cluster_status_reports_devices_and_readings_per_shard(shards):
    device = make_device(shard="shard_1").device
    make_device(shard="shard_2")
    make_device(shard="shard_2")
    Reading.objects.for_device(device).bulk_create(
        Reading(device_id=device.pk, metric="v", ts=ts, value=2.0) for ts in reading_times(4)
    )
    status = json.loads(run("cluster_status", "--json"))
    report = {s["alias"]: s for s in status["shards"]}
    assert report["shard_1"]["devices"] == 1 and report["shard_1"]["readings"] == 4
    assert report["shard_2"]["devices"] == 2 and report["shard_2"]["readings"] == 0
    assert all(s["reachable"] and s["state"] == "active" for s in report.values())
    # Each shard's pool, and the directory's, as their PgBouncer says.
    for pool in [*(s["pool"] for s in report.values()), status["directory"]["pool"]]:
        assert pool["clients_active"] >= 1  # this process's own connection at least
        assert 1 <= pool["servers"] <= pool["max_connections"] == local_cluster.POOL_SIZE

    table = run("cluster_status")
    assert table.splitlines()[0].split()[:4] == ["alias", "state", "weight", "devices"]
    (row,) = [line for line in table.splitlines() if line.startswith("shard_1 ")]
    assert re.search(rf"clients \d+.*, servers \d+/{local_cluster.POOL_SIZE}", row), row
    assert table.splitlines()[-2].startswith("directory pool: clients ")
    assert table.splitlines()[-1].startswith("directory replication: primary ")


def test_migrate_shards_migrates_every_shard(shards):
    out = run("migrate_shards")
    assert "shard_1:" in out and "shard_2:" in out and "migrated 2 shard(s)" in out
    with pytest.raises(CommandError, match="shard_77"):
        run("migrate_shards", "--shard", "shard_77")


def test_seed_demo_is_idempotent_and_spreads_devices(shards):
    first = json.loads(run("seed_demo", "--json", "--admin-password", "pw-1"))
    second = json.loads(run("seed_demo", "--json", "--admin-password", "pw-1"))
    assert len(first["devices"]) == len(second["devices"]) == 6
    assert all(d["token"] for d in first["devices"])
    assert not any(d["token"] for d in second["devices"])
    assert {d["shard"] for d in first["devices"]} == set(shards)
    assert Device.objects.count() == 6
    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.check_password("pw-1")
    demo = User.objects.get(username="demo")
    assert demo.devices.count() == 6 and not demo.is_staff
