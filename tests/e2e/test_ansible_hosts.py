"""The Ansible deployment, proven on six test hosts on this machine (issue #9).

tests/hosts/ makes each host: a network namespace on the bridge fleetbr0
(10.200.0.0/24), its own root file system (a debootstrap base made once, one overlay
each) and its own sshd. Then, from the control node over SSH, as an operator would:

1. ansible/site.yml deploys the directory + Redis (h1), shard_1 (h2), shard_2 (h3),
   an app node + Celery worker + beat (h4), an app node + HAProxy (h5);
2. devices enrol and upload over HTTPS through HAProxy on h5 (its self-signed
   certificate, trusted as served; plain HTTP only redirects); every acknowledged
   reading is stored exactly once, on its device's shard; `manage.py check --deploy`
   is clean on an app host;
3. with the devices still uploading, ansible/add_shard.yml adds h6 as shard_3 and
   rebalances; again every acknowledged reading is stored exactly once (on the
   device's current shard only) and shard_3 holds devices;
4. everything is torn down (processes, namespaces, links, overlays), pass or fail.

Skips, saying why, where the machine cannot make namespaces (not root, say).
"""

import json
import shlex
import ssl
import time
from collections.abc import Iterator
from contextlib import closing

import psycopg2
import pytest

from tests.e2e.conftest import report
from tests.e2e.device_load import DeviceLoad, DeviceRecord, connect
from tests.hosts.deploy import (
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

HOSTS = 6
DEVICES = 12
LOAD_SECONDS = 8
# Seconds between a device's batches: about 40 uploads a second from 12 devices, which
# one worker on a busy 2-core machine imports without a long backlog.
LOAD_INTERVAL = 0.3
LB_HOST = "h5"
BEAT_HOST = "h4"


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
def six_hosts() -> Iterator[TestHosts]:
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


class Databases:
    """The cluster's databases, read from the control node (an admin address in pg_hba)."""

    def __init__(self, hosts: TestHosts, password: str):
        self.directory_host = host(hosts, "h1").address
        self.password = password

    def connect(self, address: str, port: int, db: str):
        return psycopg2.connect(
            host=address, port=port, dbname=db, user="fleet", password=self.password,
            connect_timeout=5,
        )  # fmt: skip

    def directory(self, sql: str, params: list | None = None) -> list[tuple]:
        with closing(self.connect(self.directory_host, 5432, "fleet_directory")) as conn:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                rows = cur.fetchall()
            conn.commit()
        return rows

    def shards(self) -> dict[str, tuple[str, int, str]]:
        rows = self.directory(
            "SELECT alias, host, port, db_name FROM core_shard WHERE state <> 'retired'"
        )
        return {alias: (address, port, db) for alias, address, port, db in rows}

    def per_shard(self, sql: str) -> dict[str, list[tuple]]:
        result = {}
        for alias, (address, port, db) in self.shards().items():
            with closing(self.connect(address, port, db)) as conn, conn.cursor() as cur:
                cur.execute(sql)
                result[alias] = cur.fetchall()
        return result

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


def test_deploy_load_add_shard_and_rebalance(six_hosts: TestHosts, capsys) -> None:
    hosts = six_hosts
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

    # 2. Devices through the load balancer, over HTTPS; plain HTTP only redirects.
    lb_address = host(hosts, LB_HOST).address
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
    load_stats = stop_load(load)
    counts = db.assert_exactly_once(devices)
    assert counts["acknowledged"] > 0
    assert set(counts["devices_per_shard"]) == {"shard_1", "shard_2"}, counts
    report(capsys, f"load through {base_url}: {load_stats}; verified {counts}")

    # 3. A third shard host under load: add_shard.yml provisions, registers, rebalances.
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
    report(
        capsys,
        f"rebalance under load: {len(moves)} devices moved (verified); load {load_stats};"
        f" verified {counts}; total {time.monotonic() - started:.0f}s",
    )
