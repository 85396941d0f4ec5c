"""The Ansible deployment, proven on ten test hosts on this machine (issues #9, #19).

tests/hosts/ makes each host: a network namespace on the bridge fleetbr0
(10.200.0.0/24), its own root file system (a debootstrap base made once, one overlay
each) and its own sshd. Then, from the control node over SSH, as an operator would:

1. ansible/site.yml deploys etcd (h1, h3, h5), the directory on h1 + h2, shard_1 on
   h3 + h4, shard_2 on h5 + h6 (each database a Patroni pair: a primary and a
   synchronous standby, HAProxy to the primary and PgBouncer on both), Redis (h1), an
   app node + Celery worker + beat + HAProxy (h7), an app node + HAProxy (h8); h8 and
   h7 float one address (keepalived);
2. devices enrol and upload over HTTPS through the floating address (the balancers'
   shared self-signed certificate, trusted as served; plain HTTP only redirects);
   every acknowledged reading is stored exactly once, on its device's shard;
   `manage.py check --deploy` is clean on an app host; under that load, every
   primary's server connections come from its replicas' poolers only, each within the
   pool size; the fleet login sees each standby streaming synchronously;
3. with the devices still uploading, ansible/add_shard.yml adds shard_3 on h9 + h10
   and rebalances; again every acknowledged reading is stored exactly once (on the
   device's current shard only) and shard_3 holds devices;
4. with the devices still uploading, shard_1's primary dies (Patroni and PostgreSQL
   SIGKILLed); its standby is promoted (seconds reported), uploads to shard_1 succeed
   again, devices on the other shards see no error; the dead member is started again
   (as a reboot would: these hosts have no systemd to restart it) and comes back as
   the new primary's streaming synchronous standby; every acknowledged reading is
   stored exactly once;
5. with the devices still uploading, the balancer holding the address dies (its
   HAProxy and keepalived SIGKILLed); the address moves to the other, uploads
   succeed again within seconds (reported), the survivor's stats page answers, and
   every acknowledged reading is stored exactly once;
6. everything is torn down (processes, namespaces, links, overlays), pass or fail.

Skips, saying why, where the machine cannot make namespaces (not root, say).
"""

import base64
import http.client
import json
import shlex
import ssl
import time
from collections.abc import Iterator
from contextlib import closing

import psycopg2
import pytest

from core.pooler import PoolFigures, read_pool
from tests.e2e.conftest import report
from tests.e2e.device_load import DeviceLoad, DeviceRecord, connect
from tests.hosts.deploy import (
    DIRECTORY_HOSTS,
    LB_VIP,
    POOL_SIZE,
    POOLER_PORT,
    SHARD_HOSTS,
    TEST_ENV,
    ansible_playbook,
    layout,
    play_recap,
    read_secrets,
    write_inventory,
    write_secrets,
)
from tests.hosts.testhosts import TestHosts, why_unavailable

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HOSTS = 10
DEVICES = 12
LOAD_SECONDS = 8
# Seconds between a device's batches: about 40 uploads a second from 12 devices, which
# one worker on a busy 2-core machine imports without a long backlog.
LOAD_INTERVAL = 0.3
LB_HOST = "h8"  # the first balancer: holds the floating address while it is healthy
BACKUP_LB_HOST = "h7"
BEAT_HOST = "h7"
DB_PORT = 5432
PATRONI_API_PORT = 8008
# Seconds the devices keep uploading after the balancer died, once it has recovered.
FAILOVER_DEADLINE = 30
# The database whose primary dies in phase 4, and how long its standby may take.
FAILOVER_SHARD = "shard_1"
PROMOTION_DEADLINE = 30
REJOIN_DEADLINE = 120


class PhaseLoad(DeviceLoad):
    """DeviceLoad whose batches start at `first_batch`: a later phase sends new ones."""

    def __init__(
        self, base_url: str, devices: list[DeviceRecord], first_batch: int, tls: ssl.SSLContext
    ):
        super().__init__(base_url, devices, interval=LOAD_INTERVAL, ssl_context=tls)
        self.first_batch = first_batch

    def _run(self, device: DeviceRecord) -> None:
        batch = self.first_batch
        while not self._stop.is_set():
            self._send_until_acknowledged(device, batch)
            batch += 1
            time.sleep(self.interval)


@pytest.fixture(scope="module")
def test_hosts() -> Iterator[TestHosts]:
    reason = why_unavailable()
    if reason:
        pytest.skip(f"cannot make test hosts on this machine: {reason}")
    with TestHosts(HOSTS) as hosts:
        yield hosts


def host(hosts: TestHosts, name: str):
    return next(h for h in hosts.hosts if h.name == name)


def served_certificate(address: str) -> ssl.SSLContext:
    """Trust the certificate the balancer serves (self-signed: no secret gave one), and
    check every later connection against it, host name (its address) included."""
    pem = ssl.get_server_certificate((address, 443))
    return ssl.create_default_context(cadata=pem)


def get(url: str, tls: ssl.SSLContext | None = None) -> tuple[int, dict[str, str]]:
    with closing(connect(url, tls, timeout=15)) as connection:
        connection.request("GET", "/" + url.split("/", 3)[3])
        response = connection.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}


def enroll(base_url: str, tls: ssl.SSLContext, provisioning_key: str, serial: str) -> DeviceRecord:
    body = json.dumps({"provisioning_key": provisioning_key, "serial": serial})
    with closing(connect(base_url, tls, timeout=15)) as connection:
        connection.request(
            "POST", "/api/v1/device/enroll", body=body, headers={"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        data = json.loads(response.read())
    assert response.status == 201, data
    return DeviceRecord(device_id=data["device_id"], token=data["token"])


def addresses(hosts: TestHosts, names: list[str]) -> list[str]:
    return [host(hosts, name).address for name in names]


class Databases:
    """The cluster's databases, read from the control node (an admin address in pg_hba).

    A database is on two replicas; "on the primary" means PostgreSQL's own port on
    whichever of them accepts writes now (libpq's target_session_attrs), not a pooler.
    """

    def __init__(self, hosts: TestHosts, password: str):
        self.directory_hosts = addresses(hosts, DIRECTORY_HOSTS)
        self.password = password

    def connect(self, address: str, port: int, db: str, **extra):
        """`address` may list several hosts, comma-separated (libpq tries each)."""
        return psycopg2.connect(
            host=address, port=port, dbname=db, user="fleet", password=self.password,
            connect_timeout=5, **extra,
        )  # fmt: skip

    def on_primary(self, members: list[str], db: str):
        return self.connect(",".join(members), DB_PORT, db, target_session_attrs="read-write")

    def directory(self, sql: str, params: list | None = None) -> list[tuple]:
        with closing(self.on_primary(self.directory_hosts, "fleet_directory")) as conn:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                rows = cur.fetchall()
            conn.commit()
        return rows

    def shards(self) -> dict[str, tuple[str, int, str]]:
        """Each shard's registry row: (hosts, comma-separated, port, database)."""
        rows = self.directory(
            "SELECT alias, host, port, db_name FROM core_shard WHERE state <> 'retired'"
        )
        return {alias: (address, port, db) for alias, address, port, db in rows}

    def members(self) -> dict[str, list[str]]:
        """Each database -> its replicas' addresses (the shards' as registered)."""
        found = {"fleet_directory": self.directory_hosts}
        for address, _, name in self.shards().values():
            found[name] = address.split(",")
        return found

    def per_shard(self, sql: str) -> dict[str, list[tuple]]:
        """`sql` on every shard, through its poolers as the app reaches it."""
        result = {}
        for alias, (address, port, db) in self.shards().items():
            with closing(self.connect(address, port, db)) as conn, conn.cursor() as cur:
                cur.execute(sql)
                result[alias] = cur.fetchall()
        return result

    def server_connections(self, members: list[str], db: str) -> dict[str | None, int]:
        """The primary's connections to `db` by client address, read from its own port
        (the control node is an admin address), not counting this reading's own."""
        with closing(self.on_primary(members, db)) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT host(client_addr), count(*) FROM pg_stat_activity"
                " WHERE datname = %s AND backend_type = 'client backend'"
                "   AND pid <> pg_backend_pid()"
                " GROUP BY 1",
                [db],
            )
            return dict(cur.fetchall())

    def replication(self, members: list[str], db: str) -> list[tuple]:
        """pg_stat_replication on the primary, read as the app would: the fleet login
        (pg_monitor) through the poolers."""
        with closing(self.connect(",".join(members), POOLER_PORT, db)) as conn:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT application_name, host(client_addr), state, sync_state"
                    "  FROM pg_stat_replication ORDER BY 1"
                )
                rows = cur.fetchall()
            conn.commit()
        return rows

    def pool(self, address: str, db: str) -> PoolFigures:
        """The pooler's figures for `db`, read as the app reads them (SHOW POOLS on its
        console: the fleet login is a stats user)."""
        params = {"host": address, "port": POOLER_PORT, "user": "fleet", "password": self.password}
        return read_pool(params, db)

    def placements(self) -> dict[int, str]:
        return dict(self.directory("SELECT device_id, shard_id FROM core_placement"))

    def wait_all_imported(self, timeout: float = 120) -> None:
        sql = "SELECT count(*) FROM shards_upload WHERE status = 'staged'"
        deadline = time.monotonic() + timeout
        while (staged := sum(r[0][0] for r in self.per_shard(sql).values())) > 0:
            assert time.monotonic() < deadline, f"{staged} uploads still staged after {timeout}s"
            time.sleep(1)

    def assert_exactly_once(self, devices: list[DeviceRecord]) -> dict[str, object]:
        """Every acknowledged reading stored once, on the device's current shard only."""
        self.wait_all_imported()
        placement = self.placements()
        stored = {
            alias: dict(rows)
            for alias, rows in self.per_shard(
                "SELECT device_id, count(*) FROM shards_reading GROUP BY device_id"
            ).items()
        }
        acknowledged = stored_total = 0
        for device in devices:
            home = placement[device.device_id]
            elsewhere = {a: c for a, c in stored.items() if a != home and c.get(device.device_id)}
            assert not elsewhere, f"device {device.device_id} has readings off {home}: {elsewhere}"
            count = stored[home].get(device.device_id, 0)
            assert count == device.readings_acknowledged, (
                f"device {device.device_id} on {home}: {count} stored,"
                f" {device.readings_acknowledged} acknowledged"
            )
            acknowledged += device.readings_acknowledged
            stored_total += count
        devices_per_shard: dict[str, int] = {}
        for device in devices:
            alias = placement[device.device_id]
            devices_per_shard[alias] = devices_per_shard.get(alias, 0) + 1
        return {
            "acknowledged": acknowledged,
            "stored": stored_total,
            "devices_per_shard": dict(sorted(devices_per_shard.items())),
        }


def run_load(
    base_url: str, devices: list[DeviceRecord], first_batch: int, tls: ssl.SSLContext
) -> PhaseLoad:
    return PhaseLoad(base_url, devices, first_batch, tls).start()


def stop_load(load: PhaseLoad) -> dict[str, int]:
    load.stop(timeout=150)
    assert load.unexpected == [], load.unexpected[:5]
    attempts = len(load.attempts)
    return {"attempts": attempts, "retried_failures": len(load.failures())}


def check_pooled(db: Databases) -> dict[str, dict[str, object]]:
    """Under load: every primary's server connections come from its replicas' poolers
    (through their HAProxy, so from the replicas' addresses) and stay within the pool
    size per pooler, however many clients the poolers have."""
    figures = {}
    for name, members in db.members().items():
        by_source = db.server_connections(members, name)
        strangers = {source: n for source, n in by_source.items() if source not in members}
        assert not strangers, f"{name}: connections from past the poolers: {strangers}"
        assert all(n <= POOL_SIZE for n in by_source.values()), (name, by_source, POOL_SIZE)
        pools = [db.pool(address, name) for address in members]
        clients = sum(p.clients_active + p.clients_waiting for p in pools)
        assert clients > 0, f"{name}: no pool: {pools}"
        assert all(p.servers <= POOL_SIZE for p in pools), pools
        figures[name] = {
            "server_connections": by_source,
            "clients": clients,
            "cl_waiting": sum(p.clients_waiting for p in pools),
            "servers": [p.servers for p in pools],
        }
    return figures


def check_replicated(db: Databases) -> dict[str, list[tuple]]:
    """Every database's standby streams from its primary as the synchronous standby,
    as the app sees it (pg_stat_replication through the pooler, the fleet login)."""
    seen = {}
    for name, members in db.members().items():
        rows = db.replication(members, name)
        assert len(rows) == len(members) - 1, (name, rows)
        assert all(state == "streaming" and sync == "sync" for _, _, state, sync in rows), (
            name,
            rows,
        )
        seen[name] = rows
    return seen


def patroni(address: str, path: str) -> int:
    """The status Patroni's REST API answers `path` with on that replica (0: no answer)."""
    try:
        with closing(http.client.HTTPConnection(address, PATRONI_API_PORT, timeout=1)) as c:
            c.request("GET", path)
            return c.getresponse().status
    except OSError:
        return 0


def holds_vip(hosts: TestHosts, name: str) -> bool:
    shown = hosts.ssh(host(hosts, name), "ip -o -4 addr show dev eth0")
    assert shown.returncode == 0, shown.stderr
    return f" {LB_VIP}/" in shown.stdout


def stats_csv(address: str, password: str) -> str:
    """A balancer's stats page (CSV) on its own address, as the central admin reads it."""
    auth = base64.b64encode(f"fleet-ops:{password}".encode()).decode()
    with closing(http.client.HTTPConnection(address, 8404, timeout=5)) as connection:
        connection.request("GET", "/;csv;norefresh", headers={"Authorization": f"Basic {auth}"})
        response = connection.getresponse()
        body = response.read().decode()
    assert response.status == 200, (address, response.status, body[:200])
    return body


def tail(hosts: TestHosts, name: str, path: str, lines: int = 30) -> str:
    """The end of a log file on a test host, for a failure's message."""
    shown = hosts.ssh(host(hosts, name), f"tail -n {lines} {shlex.quote(path)}", timeout=20)
    return f"--- {name}:{path}\n{shown.stdout}{shown.stderr}"


def primary_of(members: list[str]) -> str:
    primaries = [address for address in members if patroni(address, "/primary") == 200]
    assert len(primaries) == 1, f"primaries among {members}: {primaries}"
    return primaries[0]


def database_failover(
    hosts: TestHosts, db: Databases, base_url: str, devices: list[DeviceRecord], tls
) -> str:
    """Phase 4: SIGKILL of Patroni and PostgreSQL on FAILOVER_SHARD's primary, under load.

    The standby is promoted once the dead primary's leader lock expires in etcd (ttl);
    HAProxy on both replicas then sends the poolers' server connections to it. The dead
    member is started again by hand, as a reboot would start it: these hosts have no
    systemd, whose patroni.service would restart it by itself (Restart=on-failure).
    """
    name = f"fleet_{FAILOVER_SHARD}"
    members = db.members()[name]
    old = primary_of(members)
    (standby,) = [address for address in members if address != old]
    by_address = {h.address: h for h in hosts.hosts}
    old_host, standby_host = by_address[old], by_address[standby]
    placement = db.placements()
    on_shard = {d.device_id for d in devices if placement[d.device_id] == FAILOVER_SHARD}
    elsewhere = {d.device_id for d in devices} - on_shard
    assert on_shard and elsewhere, placement
    patroni_log = "/var/log/patroni/patroni.log"

    load = run_load(base_url, devices, first_batch=200_000, tls=tls)
    try:
        time.sleep(2)
        # Patroni first, so it does not restart PostgreSQL; then every PostgreSQL process.
        killed = hosts.ssh(
            old_host,
            "pkill -KILL -f '^/usr/bin/python3 /usr/bin/patroni '; "
            "pkill -KILL -u postgres -x postgres; true",
        )
        killed_at = time.monotonic()
        assert killed.returncode == 0, killed.stderr
        while patroni(standby, "/primary") != 200:
            assert time.monotonic() < killed_at + PROMOTION_DEADLINE, (
                f"{standby_host.name} not promoted {PROMOTION_DEADLINE}s after the kill\n"
                + tail(hosts, standby_host.name, patroni_log)
            )
            time.sleep(0.1)
        promoted_at = time.monotonic()
        deadline = promoted_at + FAILOVER_DEADLINE
        while time.monotonic() < deadline and any(
            load.first_success_after(promoted_at, device) is None for device in on_shard
        ):
            time.sleep(0.1)
        back = [load.first_success_after(promoted_at, device) for device in on_shard]
        assert None not in back, f"{FAILOVER_SHARD}'s devices got no upload through"

        # The dead member comes back (as at boot): rewound, it follows the new primary.
        started = hosts.ssh(old_host, "service patroni start")
        restarted_at = time.monotonic()
        assert started.returncode == 0, started.stdout + started.stderr
        while (rows := db.replication(members, name)) != [
            (old_host.name, old, "streaming", "sync")
        ]:
            assert time.monotonic() < restarted_at + REJOIN_DEADLINE, (
                f"{old_host.name} is not back as a standby: {rows}\n"
                + tail(hosts, old_host.name, patroni_log)
            )
            time.sleep(0.5)
        rejoined_at = time.monotonic()
        time.sleep(2)
    finally:
        load_stats = stop_load(load)
    members_now = hosts.ssh(standby_host, "patronictl -c /etc/patroni/config.yml list -f json")
    assert members_now.returncode == 0, members_now.stdout + members_now.stderr
    roles = {m["Member"]: (m["Role"], m["State"]) for m in json.loads(members_now.stdout)}
    assert roles[standby_host.name][0] == "Leader", roles
    assert roles[old_host.name][0] == "Sync Standby", roles
    # Devices on the other shards never noticed; those on this one only retried.
    failed_elsewhere = [a for a in load.failures(elsewhere) if a.at > killed_at]
    assert not failed_elsewhere, failed_elsewhere[:5]
    failed_here = [a for a in load.failures(on_shard) if a.at > killed_at]
    counts = db.assert_exactly_once(devices)
    return (
        f"database failover: {FAILOVER_SHARD}'s primary {old_host.name} killed (Patroni and"
        f" PostgreSQL); {standby_host.name} promoted {promoted_at - killed_at:.1f}s after the"
        f" kill; uploads to {FAILOVER_SHARD} acknowledged again {min(back) - killed_at:.1f}s"
        f" after it (every one of its {len(on_shard)} devices by {max(back) - killed_at:.1f}s;"
        f" {len(failed_here)} failed attempts, retried); {len(elsewhere)} devices elsewhere:"
        f" no failure; {old_host.name} started again, streaming as the synchronous standby"
        f" {rejoined_at - restarted_at:.1f}s later ({roles}); load {load_stats};"
        f" verified {counts}"
    )


def test_deploy_load_add_shard_failover_and_rebalance(test_hosts: TestHosts, capsys) -> None:
    hosts = test_hosts
    started = time.monotonic()
    secrets_file = write_secrets()
    secret = read_secrets(secrets_file)
    layout_now = layout(with_third_shard=False)
    report(capsys, "\ntest hosts: " + ", ".join(f"{h.name}={h.address}" for h in hosts.hosts))
    report(
        capsys, "deploying: " + json.dumps({g: [n for n, _ in m] for g, m in layout_now.items()})
    )

    # 1. Deploy with site.yml over SSH.
    inventory = write_inventory(hosts, with_third_shard=False)
    elapsed, log = ansible_playbook("site.yml", inventory, secrets_file, log_name="site.log")
    report(capsys, f"site.yml: {elapsed:.0f}s\n{play_recap(log)}")
    db = Databases(hosts, secret["vault_fleet_db_password"])
    assert sorted(db.shards()) == ["shard_1", "shard_2"]
    # The app tier reaches every shard through its replicas' poolers, each one named.
    assert {alias: (address, port) for alias, (address, port, _) in db.shards().items()} == {
        alias: (",".join(addresses(hosts, SHARD_HOSTS[alias])), POOLER_PORT)
        for alias in ("shard_1", "shard_2")
    }
    replicas = check_replicated(db)
    report(capsys, f"replication (pg_stat_replication on each primary): {json.dumps(replicas)}")
    # The first balancer holds the address (once the election settled: a few seconds).
    deadline = time.monotonic() + 15
    while not holds_vip(hosts, LB_HOST) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert holds_vip(hosts, LB_HOST) and not holds_vip(hosts, BACKUP_LB_HOST)

    # 2. Devices through the balancers' floating address, over HTTPS; HTTP only redirects.
    lb_address = LB_VIP
    base_url = f"https://{lb_address}"
    tls = served_certificate(lb_address)
    status, headers = get(f"http://{lb_address}/api/v1/devices")
    assert (status, headers["location"]) == (301, f"https://{lb_address}/api/v1/devices")
    status, headers = get(f"{base_url}/accounts/login/", tls)
    assert status == 200
    assert headers["strict-transport-security"].startswith("max-age=31536000")
    assert "secure" in headers["set-cookie"].lower()  # the CSRF cookie
    report(capsys, f"HTTPS: {base_url} serves {tls.get_ca_certs()[0]['subject']}; HTTP redirects")
    # The app nodes see each client's own address behind HAProxy (TRUSTED_PROXIES): the
    # control node is an admin address and reads /readyz; a device host is not and does not.
    status, _ = get(f"{base_url}/readyz", tls)
    assert status == 200
    probe = (
        "import ssl, urllib.request, urllib.error\n"
        "tls = ssl._create_unverified_context()\n"
        "try:\n"
        f"    urllib.request.urlopen('{base_url}/readyz', context=tls)\n"
        "    print(200)\n"
        "except urllib.error.HTTPError as exc:\n"
        "    print(exc.code)\n"
    )
    outside = hosts.ssh(host(hosts, BEAT_HOST), f"python3 -c {shlex.quote(probe)}")
    assert outside.stdout.strip() == "404", outside.stdout + outside.stderr
    check = hosts.ssh(
        host(hosts, BEAT_HOST), "/usr/local/bin/fleet-manage check --deploy --fail-level WARNING"
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "no issues" in check.stdout, check.stdout
    key = secret["vault_fleet_provisioning_key"]
    devices = [enroll(base_url, tls, key, f"ansible-{time.time_ns()}-{i}") for i in range(DEVICES)]
    load = run_load(base_url, devices, first_batch=0, tls=tls)
    time.sleep(LOAD_SECONDS)
    try:
        pools = check_pooled(db)
    finally:
        load_stats = stop_load(load)
    counts = db.assert_exactly_once(devices)
    assert counts["acknowledged"] > 0
    assert set(counts["devices_per_shard"]) == {"shard_1", "shard_2"}, counts
    report(capsys, f"load through {base_url}: {load_stats}; verified {counts}")
    report(capsys, f"pools under load (pool size {POOL_SIZE}): {json.dumps(pools)}")
    # The app's settings name both directory replicas' poolers (libpq tries them in turn).
    url = hosts.ssh(host(hosts, BEAT_HOST), "grep ^DIRECTORY_DATABASE_URL= /etc/fleet/fleet.env")
    directory_poolers = ",".join(addresses(hosts, DIRECTORY_HOSTS))
    assert f"@/fleet_directory?host={directory_poolers}&port={POOLER_PORT}&" in url.stdout, url

    # 3. A third shard (two hosts) under load: add_shard.yml provisions, registers, rebalances.
    inventory = write_inventory(hosts, with_third_shard=True)
    load = run_load(base_url, devices, first_batch=100_000, tls=tls)
    time.sleep(2)
    try:
        elapsed, log = ansible_playbook(
            "add_shard.yml", inventory, secrets_file,
            "-e", json.dumps({"fleet_migrate_rebalance_args": ["--cost", "devices"]}),
            log_name="add_shard.log",
        )  # fmt: skip
        time.sleep(2)
    finally:
        load_stats = stop_load(load)
    report(capsys, f"add_shard.yml (under load): {elapsed:.0f}s\n{play_recap(log)}")
    assert "shard_3" in db.shards()
    # Old copies of moved devices go after the clean-up grace; then each row is on one shard.
    time.sleep(float(TEST_ENV["MOVE_CLEANUP_GRACE_SECONDS"]) + 1)
    cleanup = hosts.ssh(host(hosts, BEAT_HOST), "/usr/local/bin/fleet-manage move_device --cleanup")
    assert cleanup.returncode == 0, cleanup.stdout + cleanup.stderr
    moves = db.directory(
        "SELECT device_id, target_id, phase, (verification->>'ok')::boolean FROM core_movejob"
    )
    assert moves, "the rebalance moved no device"
    assert all(phase == "done" and ok for _, _, phase, ok in moves), moves
    counts = db.assert_exactly_once(devices)
    assert counts["devices_per_shard"].get("shard_3", 0) > 0, counts
    shard_3_poolers = ",".join(addresses(hosts, SHARD_HOSTS["shard_3"]))
    assert db.shards()["shard_3"][:2] == (shard_3_poolers, POOLER_PORT)
    assert len(check_replicated(db)["fleet_shard_3"]) == 1
    report(
        capsys,
        f"rebalance under load: {len(moves)} devices moved (verified); load {load_stats};"
        f" verified {counts}",
    )

    # 4. shard_1's primary dies under load; its synchronous standby is promoted.
    report(capsys, database_failover(hosts, db, base_url, devices, tls))

    # 5. The balancer holding the address dies under load; the other one takes it over.
    load = run_load(base_url, devices, first_batch=300_000, tls=tls)
    try:
        time.sleep(2)
        killed = hosts.ssh(
            host(hosts, LB_HOST), "pkill -KILL -x keepalived; pkill -KILL -x haproxy; true"
        )
        killed_at = time.monotonic()
        assert killed.returncode == 0, killed.stderr
        deadline = killed_at + FAILOVER_DEADLINE
        while time.monotonic() < deadline and load.successes_after(killed_at) == 0:
            time.sleep(0.1)
        first_ok = min(
            (t for d in devices if (t := load.first_success_after(killed_at, d.device_id))),
            default=None,
        )
        assert first_ok is not None, f"no upload succeeded {FAILOVER_DEADLINE}s after the kill"
        # Every device gets through again, then a few more seconds of load on the survivor.
        while time.monotonic() < deadline and any(
            load.first_success_after(killed_at, d.device_id) is None for d in devices
        ):
            time.sleep(0.1)
        all_ok = [load.first_success_after(killed_at, d.device_id) for d in devices]
        assert None not in all_ok, "some devices got no upload through after the failover"
        time.sleep(3)
    finally:
        load_stats = stop_load(load)
    assert holds_vip(hosts, BACKUP_LB_HOST), "the floating address did not move"
    failed_after_kill = [a for a in load.failures() if a.at > killed_at]
    report(
        capsys,
        f"failover: the address moved {LB_HOST} -> {BACKUP_LB_HOST}; uploads through"
        f" {base_url} succeeded again {first_ok - killed_at:.1f}s after the kill, every device"
        f" {max(all_ok) - killed_at:.1f}s after; {len(failed_after_kill)} failed attempts"
        f" (retried); load {load_stats}",
    )
    # The survivor's stats page answers on its own address and sees the app nodes.
    survivor = stats_csv(
        host(hosts, BACKUP_LB_HOST).address, secret["vault_fleet_haproxy_stats_password"]
    )
    assert "app_nodes,app1," in survivor and "app_nodes,app2," in survivor
    # The central admin reads both balancers: the dead one as unreachable.
    read = hosts.ssh(
        host(hosts, BEAT_HOST),
        "/usr/local/bin/fleet-manage shell -c "
        + shlex.quote(
            "import json; from central_admin.haproxy_status import read_all_haproxy; "
            "print(json.dumps([[s.address, len(s.servers), bool(s.error)]"
            " for s in read_all_haproxy()]))"
        ),
    )
    assert read.returncode == 0, read.stdout + read.stderr
    seen = {
        address: (servers, error)
        for address, servers, error in json.loads(read.stdout.splitlines()[-1])
    }
    assert seen == {
        f"{host(hosts, LB_HOST).address}:8404": (0, True),
        f"{host(hosts, BACKUP_LB_HOST).address}:8404": (2, False),
    }, seen
    counts = db.assert_exactly_once(devices)
    report(
        capsys, f"after the failover: verified {counts}; total {time.monotonic() - started:.0f}s"
    )
