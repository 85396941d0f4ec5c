"""A scaled-up app tier stays within each database's pool (issue #18).

The e2e cluster's app tier is restarted as 4 nodes x 4 processes x 8 threads (128
request threads, each keeping its own client connection to every database it used)
beside the Celery worker, and devices on every shard upload flat out through HAProxy.
Meanwhile a sampler reads pg_stat_activity on each PostgreSQL server directly (not
through the pooler): the server connections to the cluster's database never exceed
the pool size, while PgBouncer shows more clients than that, and no request fails.
The app tier is put back as it was afterwards.
"""

import threading
import time
from collections.abc import Iterator

import pytest

from core import local_cluster
from core.pooler import read_pool
from tests.e2e.conftest import E2E_ENV, E2ECluster, enroll_fleet, report
from tests.e2e.device_load import DeviceLoad

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Above the kernel's ephemeral range, as every e2e port (conftest.E2E_ENV).
SCALED_TIER = {
    "FLEET_APP_PORTS": "61011,61012,61013,61014",
    "FLEET_APP_PROCESSES": "4",
    "FLEET_APP_THREADS": "8",
}
DEVICES = 48
LOAD_SECONDS = 12
SAMPLE_EVERY = 0.05
SERVER_CONNECTIONS_SQL = """
    SELECT count(*) FROM pg_stat_activity
    WHERE datname = %s AND backend_type = 'client backend' AND pid <> pg_backend_pid()
"""


class Sampler:
    """Peaks of server connections (pg_stat_activity) and pool clients, per database."""

    def __init__(self, cluster: E2ECluster, shards: set[str]):
        self.cluster = cluster
        self.databases = [
            cluster.info["directory"],
            *(where for alias, where in cluster.info["shards"].items() if alias in shards),
        ]
        self.servers = {where["db"]: 0 for where in self.databases}
        self.clients = {where["db"]: 0 for where in self.databases}
        self.waiting = {where["db"]: 0 for where in self.databases}
        self.pool_size = {where["db"]: 0 for where in self.databases}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pool-sampler")

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        direct = {
            where["db"]: self.cluster.connect(where["port"], where["db"])
            for where in self.databases
        }
        try:
            for connection in direct.values():
                connection.autocommit = True
            while not self._stop.is_set():
                for where in self.databases:
                    self._sample(direct[where["db"]], where)
                time.sleep(SAMPLE_EVERY)
        finally:
            for connection in direct.values():
                connection.close()

    def _sample(self, connection, where) -> None:
        db = where["db"]
        with connection.cursor() as cursor:
            cursor.execute(SERVER_CONNECTIONS_SQL, [db])
            self.servers[db] = max(self.servers[db], cursor.fetchone()[0])
        params = {
            "host": where["host"], "port": where["pooler_port"],
            "user": local_cluster.DB_USER, "password": local_cluster.DB_PASSWORD,
        }  # fmt: skip
        pool = read_pool(params, db)
        self.clients[db] = max(self.clients[db], pool.clients_active + pool.clients_waiting)
        self.waiting[db] = max(self.waiting[db], pool.clients_waiting)
        self.pool_size[db] = pool.cap


@pytest.fixture
def scaled_tier(e2e_cluster: E2ECluster) -> Iterator[E2ECluster]:
    scaled = E2ECluster(env={**e2e_cluster.env, **SCALED_TIER}, info={})
    try:
        scaled.up()
        scaled.reload_info()
        yield scaled
    finally:
        e2e_cluster.up()  # the usual two nodes again; the scaled ones are stopped as stale
        e2e_cluster.reload_info()


def test_server_connections_stay_within_the_pool_under_a_scaled_app_tier(scaled_tier, capsys):
    cluster = scaled_tier
    assert cluster.info["app_nodes"] == [
        f"http://127.0.0.1:{port}/" for port in SCALED_TIER["FLEET_APP_PORTS"].split(",")
    ]
    devices = enroll_fleet(cluster, f"pool-{time.time_ns()}", DEVICES)
    placement = cluster.placements()
    shards = {placement[d.device_id] for d in devices}
    assert len(shards) >= 2, shards

    with Sampler(cluster, shards) as sampler:
        load = DeviceLoad(cluster.url, devices, interval=0).start()
        time.sleep(LOAD_SECONDS)
        load.stop(timeout=150)

    assert load.unexpected == [], load.unexpected[:5]
    assert load.failures() == [], load.failures()[:5]
    pool_size = int(E2E_ENV["FLEET_POOL_SIZE"])
    for db, peak in sampler.servers.items():
        assert sampler.pool_size[db] == pool_size
        assert 0 < peak <= pool_size, f"{db}: {peak} server connections, pool {pool_size}"
    busiest = max(sampler.clients.values())
    assert busiest > pool_size, f"the tier never had more clients than the pool: {sampler.clients}"
    summary = cluster.assert_exactly_once(devices)
    report(
        capsys,
        f"\n[pool] 4 nodes x 4 processes x 8 threads, {DEVICES} devices flat out for"
        f" {LOAD_SECONDS} s: {len(load.attempts)} uploads, 0 failed; per database peak"
        f" server connections {sampler.servers} (pool {pool_size}), peak clients"
        f" {sampler.clients}, peak waiting {sampler.waiting}; {summary}",
    )
