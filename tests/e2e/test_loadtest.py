"""The Locust device swarm against the e2e cluster's HAProxy, checked by the verifier.

A short headless run (a handful of devices for about 20 s) through the real
stack; the verifier (loadtest/verify.py, an outside client reading the
databases) must find every acknowledged reading stored exactly once. Then the
verifier itself is tested: a reading removed, a reading copied to another shard
and a batch the device never sent must each make it fail. No timing is asserted.
"""

from pathlib import Path

import pytest

from loadtest.run import Ledger, RunResult, run_locust, verify, verify_run
from tests.e2e.conftest import E2E_VAR, E2ECluster, report

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DEVICES = 6


@pytest.fixture(scope="module")
def swarm_run(e2e_cluster: E2ECluster, tmp_path_factory) -> RunResult:
    out_dir = tmp_path_factory.mktemp("loadtest") / "swarm"
    return run_locust(
        "swarm",
        DEVICES,
        "20s",
        out_dir,
        env={"LOADTEST_BATCH": "10", "LOADTEST_INTERVAL": "0.2"},
        cluster_json=E2E_VAR / "cluster.json",
    )


def test_swarm_through_haproxy_stores_every_acknowledged_reading_once(
    e2e_cluster: E2ECluster, swarm_run: RunResult, capsys
):
    summary = verify_run(swarm_run, E2E_VAR / "cluster.json")
    upload = swarm_run.row("upload")
    report(
        capsys,
        f"\nlocust swarm: {DEVICES} devices, {upload['requests']} uploads"
        f" ({upload['rps']:.1f}/s, p50 {upload['p50_ms']:.0f} ms, p99 {upload['p99_ms']:.0f} ms),"
        f" {swarm_run.failures} failed requests; verified {summary['acknowledged']} readings"
        f" acknowledged, {summary['stored']} stored; locust CPU {swarm_run.cpu_seconds:.1f} s",
    )
    assert swarm_run.failures == 0, swarm_run.rows
    assert summary["devices"] == DEVICES
    assert summary["failed"] == [], summary["failed"]
    assert summary["acknowledged"] == summary["stored"] > 0
    # Every device enrolled and got batches through.
    ledger = Ledger.read(Path(swarm_run.out_dir))
    assert all(len(batches) > 0 for batches in ledger.acknowledged.values())
    for path in ("locust_stats.csv", "locust_stats_history.csv", "report.html"):
        assert (Path(swarm_run.out_dir) / path).stat().st_size > 0, path


def shard_entry(cluster: E2ECluster, alias: str) -> tuple[int, str]:
    shard = cluster.info["shards"][alias]
    return shard["port"], shard["db"]


def run_sql(cluster: E2ECluster, alias: str, sql: str, params: list) -> None:
    conn = cluster.connect(*shard_entry(cluster, alias))
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql, params)
        conn.commit()
    finally:
        conn.close()


def failures_for(cluster: E2ECluster, ledger: Ledger, device_id: int) -> list[str]:
    result = verify(cluster.info, ledger, wait=30)
    return [p for check in result.failed if check.device_id == device_id for p in check.problems]


def test_verifier_detects_missing_doubled_and_unsent_readings(
    e2e_cluster: E2ECluster, swarm_run: RunResult
):
    out_dir = Path(swarm_run.out_dir)
    ledger = Ledger.read(out_dir)
    placement = e2e_cluster.placements()
    victim = sorted(ledger.acknowledged)[0]
    home = placement[victim]
    other = next(alias for alias in e2e_cluster.info["shards"] if alias != home)
    assert failures_for(e2e_cluster, ledger, victim) == []

    # A reading lost: one row of the device goes from its shard.
    conn = e2e_cluster.connect(*shard_entry(e2e_cluster, home))
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                "DELETE FROM shards_reading WHERE ctid = (SELECT ctid FROM shards_reading"
                " WHERE device_id = %s ORDER BY ts DESC, metric LIMIT 1)"
                " RETURNING metric, ts, value",
                [victim],
            )
            lost = cursor.fetchone()
        conn.commit()
    finally:
        conn.close()
    problems = failures_for(e2e_cluster, ledger, victim)
    assert any("stored" in p and "expected" in p for p in problems), problems

    # The reading back home, and a copy of it on another shard: stored twice.
    insert = "INSERT INTO shards_reading (device_id, metric, ts, value) VALUES (%s, %s, %s, %s)"
    run_sql(e2e_cluster, home, insert, [victim, *lost])
    assert failures_for(e2e_cluster, ledger, victim) == []
    run_sql(e2e_cluster, other, insert, [victim, *lost])
    problems = failures_for(e2e_cluster, ledger, victim)
    assert any("other shards" in p for p in problems), problems
    run_sql(e2e_cluster, other, "DELETE FROM shards_reading WHERE device_id = %s", [victim])

    # A batch the device was never told was stored (the ledger without it).
    forgotten = dict(ledger.acknowledged[victim])
    forgotten.popitem()
    tampered = Ledger(
        acknowledged={**ledger.acknowledged, victim: forgotten}, unanswered=ledger.unanswered
    )
    problems = failures_for(e2e_cluster, tampered, victim)
    assert any("never sent" in p for p in problems), problems
    assert any("stored" in p and "expected" in p for p in problems), problems
    # Untouched, the run verifies again.
    assert verify(e2e_cluster.info, ledger, wait=30).ok
