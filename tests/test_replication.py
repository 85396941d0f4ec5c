"""What the app says about each database's primary and standbys, and the local cluster's
replicated shape as configured (the failover itself: tests/e2e/test_failover.py).

The unit suite's cluster has one server per database, so here every database says
"no standby"; the e2e failover tests read the same figures from a replicated cluster.
"""

import io
import json
import re
import threading
import time

import pytest
from django.core.management import call_command
from django.db import connections, transaction
from django.test import Client

from cluster import cli
from cluster.dbproxy import DatabaseProxy
from cluster.patroni import DCS_TIMING, PatroniNode
from cluster.pgbouncer import Pooler
from cluster.ports import free_port, port_in_use
from cluster.postgres import PostgresInstance
from cluster.replicated import ReplicatedDatabase
from cluster.util import ClusterError
from core import local_cluster
from core.replication import Replication, Standby, read_replication
from routers.aliases import DIRECTORY_ALIAS


def server_port(alias: str) -> int:
    """The PostgreSQL server behind `alias` (the unit suite's databases are not replicated)."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT inet_server_port()")
        return cursor.fetchone()[0]


def test_each_database_names_the_server_that_answered_and_has_no_standby(shards):
    for alias in [DIRECTORY_ALIAS, *shards]:
        with connections[alias].cursor() as cursor:
            state = read_replication(cursor)
        assert state.server == f"{local_cluster.HOST}:{server_port(alias)}"
        assert state.in_recovery is False and state.standbys == []
        assert state.synchronous is False
        assert state.summary() == f"primary {state.server}, no standby"


def test_a_synchronous_streaming_standby_is_summed_up():
    standby = Standby("shard_1-n1", "127.0.0.1", "streaming", "sync", 2048, 0.25)
    state = Replication("127.0.0.1:56433", False, [standby])
    assert state.synchronous
    assert state.summary() == (
        "primary 127.0.0.1:56433; standby shard_1-n1 streaming sync, lag 2048 B (0.2 s)"
    )
    behind = Replication(
        "127.0.0.1:56433", False, [Standby("b", None, "catchup", "async", None, None)]
    )
    assert not behind.synchronous
    assert Replication("x:1", True).summary().startswith("x:1 is a standby")


def test_cluster_status_shows_replication_for_every_shard_and_the_directory(shards):
    out = io.StringIO()
    call_command("cluster_status", "--json", stdout=out)
    report = json.loads(out.getvalue())
    by_alias = {entry["alias"]: entry for entry in report["shards"]}
    for alias in shards:
        replication = by_alias[alias]["replication"]
        assert replication["server"] == f"{local_cluster.HOST}:{server_port(alias)}"
        assert replication["standbys"] == [] and replication["synchronous"] is False
    assert report["directory"]["replication"]["in_recovery"] is False

    out = io.StringIO()
    call_command("cluster_status", stdout=out)
    text = out.getvalue()
    assert "replication" in text.splitlines()[0]
    assert f"primary {local_cluster.HOST}:{server_port(shards[0])}, no standby" in text
    assert re.search(r"^directory replication: primary \S+, no standby$", text, re.M)


def test_readyz_names_each_databases_primary(shards):
    body = Client().get("/readyz").json()
    assert body["directory"]["replication"]["server"].endswith(f":{server_port('default')}")
    for alias in shards:
        assert body["shards"][alias]["replication"]["standbys"] == []


# -- the local cluster's replicated shape, as configured ---------------------------------


@pytest.fixture
def replicated(monkeypatch, tmp_path):
    monkeypatch.setattr(local_cluster, "VAR_DIR", tmp_path)
    monkeypatch.setattr(local_cluster, "REPLICAS", 2)
    return tmp_path


def test_replicated_shape_gives_every_database_two_members_behind_its_own_port(replicated):
    servers = cli.postgres_instances()
    assert [server.name for server, _ in servers] == ["directory", *local_cluster.SHARDS]
    for server, _ in servers:
        assert isinstance(server, ReplicatedDatabase)
        ports = [node.port for node in server.nodes]
        assert ports == [local_cluster.node_port(server.port, n) for n in (0, 1)]
        assert len(set(ports) | {server.port}) == 3
        assert cli.pooler_for(server).server_port == server.port  # the pooler uses the proxy
    reserved = cli.reserved_ports()
    for server, _ in servers:
        assert server.ports() <= reserved
    assert {local_cluster.ETCD_PORT, local_cluster.ETCD_PORT + 1} <= reserved
    # Each database: its port, its pooler, two replicas and their REST APIs; etcd (2);
    # Redis, HAProxy and its stats page; the app nodes.
    assert len(reserved) == len(servers) * 6 + 2 + 3 + len(local_cluster.APP_PORTS)


def test_a_var_dir_keeps_the_shape_it_was_made_with(replicated):
    with pytest.raises(ClusterError, match="FLEET_REPLICAS=1"):
        cli._check_shape({"directory": {"port": 1}})  # made before replicas were recorded
    cli._check_shape({"directory": {"port": 1}, "replicas": 2})
    cli._check_shape({})  # a new var dir takes the shape asked for


def test_patroni_keeps_commits_on_a_synchronous_standby_and_fails_over_in_time(tmp_path):
    node = PatroniNode("shard_1", 1, 56533, 58533, tmp_path, 52379)
    config = node.config(tmp_path / "bin")
    dcs = config["bootstrap"]["dcs"]
    assert dcs["synchronous_mode"] is True and "synchronous_mode_strict" not in dcs
    assert dcs["postgresql"]["use_pg_rewind"] is True
    assert dcs["postgresql"]["parameters"]["synchronous_commit"] == "on"
    # Patroni refuses timings where a loop and two retries do not fit in the key's life.
    assert DCS_TIMING["loop_wait"] + 2 * DCS_TIMING["retry_timeout"] <= DCS_TIMING["ttl"]
    assert config["name"] == "shard_1-n1" and config["scope"] == "fleet-shard_1"
    assert config["postgresql"]["listen"] == "127.0.0.1:56533"
    assert config["postgresql"]["data_dir"].endswith("pg/shard_1-n1/data")


def test_the_database_proxy_follows_patronis_primary_and_cuts_a_demoted_ones_sessions(
    tmp_path,
):
    database = ReplicatedDatabase("shard_1", 54433, tmp_path, 2, 52379)
    proxy = DatabaseProxy("shard_1", 54433, database.nodes, tmp_path)
    config = proxy.render()
    assert "bind 127.0.0.1:54433" in config
    assert "option httpchk OPTIONS /primary" in config
    assert "on-marked-down shutdown-sessions" in config
    for node in database.nodes:
        assert f"server {node.name} 127.0.0.1:{node.port} check port {node.rest_port}" in config
    path = tmp_path / "proxy.cfg"
    path.write_text(config)
    from cluster.haproxy import check_config

    check_config(path)  # HAProxy itself accepts it


# -- a planned switchover's pause, on the unit suite's own pooler -----------------------


def shard_pooler(alias: str) -> tuple[Pooler, str]:
    port, _ = local_cluster.SHARDS[alias]
    return Pooler(alias, port, local_cluster.VAR_DIR), connections[alias].settings_dict["NAME"]


def test_a_paused_pool_holds_transactions_and_resumes_them(shards):
    pooler, dbname = shard_pooler("shard_1")
    finished: list[float] = []

    def query() -> None:
        try:
            with connections["shard_1"].cursor() as cursor:
                cursor.execute("SELECT 1")
            finished.append(time.monotonic())
        finally:
            connections.close_all()

    with pooler.paused(dbname, timeout=10):
        paused_at = time.monotonic()
        waiting = threading.Thread(target=query)
        waiting.start()
        time.sleep(1.0)
        assert finished == [], "a query ran while the pool was paused"
    waiting.join(timeout=20)
    assert finished and finished[0] - paused_at >= 1.0
    assert pooler.pool(dbname).clients_waiting == 0


def test_a_transaction_left_open_makes_the_pause_give_up_and_change_nothing(shards):
    pooler, dbname = shard_pooler("shard_1")
    ran = []
    with transaction.atomic(using="shard_1"):
        with connections["shard_1"].cursor() as cursor:
            cursor.execute("SELECT 1")
        with pytest.raises(ClusterError, match="still open after 1s"), pooler.paused(dbname, 1):
            ran.append(True)
    assert ran == []
    with connections["shard_1"].cursor() as cursor:  # resumed: the pool serves again
        cursor.execute("SELECT 2")
        assert cursor.fetchone() == (2,)


def test_stopping_a_member_whose_patroni_died_stops_its_postgresql_too():
    """Patroni killed on its own leaves its PostgreSQL running (an orphan still holding
    the port and the data directory); stopping the member must stop that server too."""
    var = local_cluster.VAR_DIR / "test" / "orphan"
    node = PatroniNode("orphan", 0, free_port(), free_port(), var, local_cluster.ETCD_PORT)
    server = PostgresInstance("data", node.port, node.home, var / "log")  # Patroni's layout
    server.destroy()
    server.ensure_running()
    try:
        assert node.pid() is None and node.postmaster_pid() == server.pid()
        assert node.stop() is True
        assert server.pid() is None and not port_in_use(node.port)
    finally:
        server.destroy()
