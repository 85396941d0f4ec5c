"""Run one headless Locust scenario, keep its reports, then verify the stored readings.

    python loadtest/run.py --scenario swarm --users 50 --run-time 60s
    python loadtest/run.py --scenario mix --users 40 --interval 2
    python loadtest/run.py --scenario web --users 5

Each run gets var/loadtest/<timestamp>-<scenario>/ with Locust's CSV files
(stats.csv, stats_history.csv, failures.csv), its HTML report (report.html), the
devices' ledgers and verify.json. The run fails (exit 1) if any request failed or
any device's acknowledged readings are not stored exactly once. Locust runs as a
child process, so its CPU time is known: the load generator shares the machine
with the cluster, and the report says how much of it the generator took.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# A sibling script (found through the path above), not project code.
from verify import Ledger, verify

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
SCENARIOS = {
    "swarm": ["DeviceUser"],
    "web": ["WebUser"],
    "mix": ["DeviceUser", "WebUser"],
    "ceiling": ["EmptyViewUser"],
}


@dataclass
class RunResult:
    out_dir: str
    scenario: str
    users: int
    seconds: float
    requests: int
    failures: int
    rows: dict[str, dict] = field(default_factory=dict)  # locust's stats rows by name
    cpu_seconds: float = 0.0  # user + system time of the locust process
    verified: dict | None = None

    @property
    def cpu_share(self) -> float:
        """Fraction of one core the load generator used over the run."""
        return self.cpu_seconds / self.seconds if self.seconds else 0.0

    def row(self, prefix: str) -> dict:
        return next(v for k, v in self.rows.items() if k.startswith(prefix))


def stats_rows(path: Path) -> dict[str, dict]:
    """Locust's stats.csv as {name: {requests, failures, rps, p50, p95, p99, avg}}."""
    rows = {}
    with path.open() as handle:
        for row in csv.DictReader(handle):
            rows[row["Name"]] = {
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "rps": float(row["Requests/s"]),
                "avg_ms": float(row["Average Response Time"]),
                "p50_ms": float(row["50%"]),
                "p95_ms": float(row["95%"]),
                "p99_ms": float(row["99%"]),
                "max_ms": float(row["Max Response Time"]),
            }
    return rows


def run_locust(
    scenario: str,
    users: int,
    run_time: str,
    out_dir: Path,
    *,
    env: dict[str, str] | None = None,
    spawn_rate: float | None = None,
    cluster_json: Path | None = None,
    reset_stats: bool = False,
) -> RunResult:
    """One headless run; `env` sets the locustfile's LOADTEST_* knobs. `reset_stats`
    leaves the spawning (each device's enrolment and login) out of the figures."""
    out_dir.mkdir(parents=True, exist_ok=True)
    child_env = {
        **os.environ,
        "LOADTEST_LEDGER_DIR": str(out_dir),
        "LOADTEST_RUN": out_dir.name,
        **(env or {}),
    }
    if cluster_json:
        child_env["LOADTEST_CLUSTER_JSON"] = str(cluster_json)
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *SCENARIOS[scenario],
        "--headless", "--users", str(users), "--spawn-rate", str(spawn_rate or users),
        "--run-time", run_time, "--stop-timeout", "30", "--only-summary",
        "--csv", str(out_dir / "locust"), "--csv-full-history",
        "--html", str(out_dir / "report.html"), "--exit-code-on-error", "0",
        *(["--reset-stats"] if reset_stats else []),
    ]  # fmt: skip
    started = time.monotonic()
    with (out_dir / "locust.log").open("w") as log:
        process = subprocess.Popen(command, env=child_env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    if process.returncode != 0:
        raise RuntimeError(f"locust exited {process.returncode}; see {out_dir / 'locust.log'}")
    rows = stats_rows(out_dir / "locust_stats.csv")
    total = rows.get("Aggregated", {"requests": 0, "failures": 0})
    return RunResult(
        out_dir=str(out_dir),
        scenario=scenario,
        users=users,
        seconds=seconds,
        requests=total["requests"],
        failures=total["failures"],
        rows=rows,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
    )


def verify_run(result: RunResult, cluster_json: Path, wait: float = 120.0) -> dict:
    """Check the run's ledgers against the databases; kept as verify.json beside it."""
    out_dir = Path(result.out_dir)
    info = json.loads(cluster_json.read_text())
    report = verify(info, Ledger.read(out_dir), wait)
    summary = {
        "ok": report.ok,
        "devices": report.devices,
        "acknowledged": report.acknowledged,
        "stored": report.stored,
        "failed": [asdict(check) for check in report.failed],
    }
    (out_dir / "verify.json").write_text(json.dumps(summary, indent=1))
    result.verified = summary
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="swarm")
    parser.add_argument("--users", type=int, default=20, help="Devices (and web users).")
    parser.add_argument("--run-time", default="30s", help="Locust's --run-time, e.g. 60s, 5m.")
    parser.add_argument("--batch", type=int, default=10, help="Readings per upload.")
    parser.add_argument("--interval", type=float, default=1.0, help="Seconds between uploads.")
    parser.add_argument(
        "--cluster-json", type=Path, default=ROOT / "var" / "cluster.json",
        help="The cluster to load (its URL, fleet key, logins and databases).",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "loadtest")
    args = parser.parse_args()

    out_dir = args.out / f"{time.strftime('%Y%m%d-%H%M%S')}-{args.scenario}"
    result = run_locust(
        args.scenario,
        args.users,
        args.run_time,
        out_dir,
        env={"LOADTEST_BATCH": str(args.batch), "LOADTEST_INTERVAL": str(args.interval)},
        cluster_json=args.cluster_json,
    )
    print((out_dir / "locust.log").read_text())
    ok = result.failures == 0
    if args.scenario != "web":
        summary = verify_run(result, args.cluster_json)
        print(
            f"verified: {summary['devices']} devices, {summary['acknowledged']} readings"
            f" acknowledged, {summary['stored']} stored; {len(summary['failed'])} devices wrong"
        )
        for check in summary["failed"]:
            print(f"  device {check['device_id']}: {'; '.join(check['problems'])}")
        ok = ok and summary["ok"]
    print(
        f"{result.requests} requests, {result.failures} failed; the load generator used"
        f" {result.cpu_seconds:.1f} s CPU ({result.cpu_share:.0%} of one core). Reports: {out_dir}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
