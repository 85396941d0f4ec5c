"""Fault tests on a real cluster: uploads stream through HAProxy while a part dies.

Each test drives devices on both shards (retrying like real devices), injects
one fault by killing or stopping a real process, prints what it measured, and
checks the stored data: every acknowledged reading exactly once.
"""

import os
import signal
import time

import pytest

from cluster.postgres import PostgresInstance
from cluster.util import pid_alive, read_pid
from tests.e2e.conftest import E2E_ENV, E2E_VAR, E2ECluster, report
from tests.e2e.device_load import DeviceLoad, DeviceRecord

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WARM_UP = 3.0


def everyone(fleet: dict[str, list[DeviceRecord]]) -> list[DeviceRecord]:
    return [device for devices in fleet.values() for device in devices]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout}s"
        time.sleep(interval)
    return time.monotonic()


def test_killed_app_node_fails_only_in_flight_requests(e2e_cluster: E2ECluster, fleet, capsys):
    devices = everyone(fleet)
    load = DeviceLoad(e2e_cluster.url, devices).start()
    try:
        time.sleep(WARM_UP)
        assert e2e_cluster.server_status("app-1").startswith("UP")
        killed_at = time.monotonic()
        assert e2e_cluster.kill(e2e_cluster.app_marker(1)), "no app-1 processes to kill"
        detected_at = wait_for(
            lambda: e2e_cluster.server_status("app-1").startswith("DOWN"), 10, "app-1 DOWN"
        )
        time.sleep(4)  # the cluster serves on one node
    finally:
        load.stop()
    detection = detected_at - killed_at
    failures = load.failures()
    after_detection = [f for f in failures if f.at > detected_at + 0.5]
    summary = e2e_cluster.assert_exactly_once(devices)
    report(
        capsys,
        f"\napp node kill: detection {detection:.2f}s, failed attempts {len(failures)}"
        f" (after detection {len(after_detection)}), attempts {len(load.attempts)}, {summary}",
    )
    assert not load.unexpected, load.unexpected
    assert detection <= 2.0, f"HAProxy took {detection:.2f}s to take the dead node out"
    assert after_detection == []
    # At most the requests in flight at the kill: one per device.
    assert len(failures) <= len(devices)
    assert all(killed_at <= f.at for f in failures)
    e2e_cluster.up()  # the node comes back for the next tests
    wait_for(lambda: e2e_cluster.server_status("app-1").startswith("UP"), 15, "app-1 UP again")


def shard_instance(alias: str) -> PostgresInstance:
    port = int(E2E_ENV[f"FLEET_{alias.upper()}_PORT"])
    return PostgresInstance(alias, port, E2E_VAR / "pg", E2E_VAR / "log")


def test_stopped_shard_answers_503_and_the_other_shard_carries_on(e2e_cluster, fleet, capsys):
    victims = {d.device_id for d in fleet["shard_1"]}
    bystanders = {d.device_id for d in fleet["shard_2"]}
    instance = shard_instance("shard_1")
    load = DeviceLoad(e2e_cluster.url, everyone(fleet)).start()
    try:
        time.sleep(WARM_UP)
        instance.stop()
        stopped_at = time.monotonic()  # from here on every answer for shard_1 must be 503
        time.sleep(4)
        restarted_at = time.monotonic()
        instance.ensure_running()
        back = [
            wait_for(lambda d=d: load.first_success_after(restarted_at, d), 30, f"device {d} back")
            for d in victims
        ]
        time.sleep(2)
    finally:
        if not instance.is_running():
            instance.ensure_running()
        load.stop()
    recovery = max(back) - restarted_at
    victim_failures = load.failures(victims)
    during = [
        a for a in load.attempts if a.device_id in victims and stopped_at < a.at < restarted_at
    ]
    summary = e2e_cluster.assert_exactly_once(everyone(fleet))
    report(
        capsys,
        f"\nshard stop: shard_1 devices failed {len(victim_failures)} attempts (all 503:"
        f" {all(f.status == 503 for f in victim_failures)}), shard_2 devices failed"
        f" {len(load.failures(bystanders))}, full service {recovery:.2f}s after restart, {summary}",
    )
    assert not load.unexpected, load.unexpected
    assert load.failures(bystanders) == []
    assert load.successes_after(stopped_at + 1, bystanders) > 0
    assert during and all(a.status == 503 and a.retry_after for a in during)
    assert all(f.status == 503 for f in victim_failures)
    assert recovery <= 5.0


def test_killed_celery_worker_loses_and_doubles_nothing(e2e_cluster, fleet, capsys):
    devices = everyone(fleet)
    load = DeviceLoad(e2e_cluster.url, devices).start()
    try:
        time.sleep(WARM_UP)
        killed = e2e_cluster.kill(str(E2E_VAR / "run" / "celery-worker.pid"))
        assert killed, "no worker processes to kill"
        time.sleep(3)
        staged_while_down = e2e_cluster.staged_uploads()
        e2e_cluster.up()
        time.sleep(2)
    finally:
        load.stop()
    summary = e2e_cluster.assert_exactly_once(devices)
    report(
        capsys,
        f"\nworker kill: killed {len(killed)} processes, {staged_while_down} uploads staged"
        f" while it was down, failed attempts {len(load.failures())}, {summary}",
    )
    assert not load.unexpected, load.unexpected
    assert load.failures() == []
    assert staged_while_down > 0


def test_uploads_are_accepted_while_redis_is_down(e2e_cluster, fleet, capsys):
    devices = everyone(fleet)
    pid_file = E2E_VAR / "run" / "redis.pid"
    load = DeviceLoad(e2e_cluster.url, devices).start()
    try:
        time.sleep(WARM_UP)
        pid = read_pid(pid_file)
        assert pid, "redis is not running"
        os.kill(pid, signal.SIGTERM)
        stopped_at = wait_for(lambda: not pid_alive(pid, "redis-server"), 10, "redis stopped")
        time.sleep(5)
        accepted_while_down = load.successes_after(stopped_at)
        staged_while_down = e2e_cluster.staged_uploads()
        e2e_cluster.up()
        time.sleep(2)
    finally:
        load.stop()
    summary = e2e_cluster.assert_exactly_once(devices)  # waits for the sweeper's imports
    report(
        capsys,
        f"\nredis stop: {accepted_while_down} uploads accepted while it was down,"
        f" {staged_while_down} staged then, failed attempts {len(load.failures())}, {summary}",
    )
    assert not load.unexpected, load.unexpected
    assert accepted_while_down > 0
    assert load.failures() == []
