"""The benchmark suite behind `make bench`: every figure beside its baseline, in one run.

Run: .venv/bin/python bench/suite.py            (the local cluster must be up; `make bench`
     starts it)   --quick for a short trial run; --help for the knobs.

Against the running local cluster (var/cluster.json), in this order:

1. uploads through HAProxy at a fixed concurrency (devices sending back to back) for
   batches of 1, 100 and 1000 readings: uploads/s in the steady window, p50/p95/p99;
   and the ceiling: an empty Django view (`GET /healthz`, no database) at the same
   concurrency through the same HAProxy and nodes, that uploads are set against; the
   sustainable rate; then the batches of 100 (flat out, and paced at half that rate)
   through PgBouncer and again with the cluster restarted without it
   (FLEET_POOLER=off, Django straight to PostgreSQL), for the pooler's cost, and the
   cluster restarted as it was (`--skip-pooler` leaves this out); and the same two runs
   on the replicated shape (FLEET_REPLICAS=2: every database a Patroni pair with a
   synchronous standby, in var/bench-replicated on the same ports), for what synchronous
   replication costs, the plain cluster started again afterwards (`--skip-replication`);
2. end-to-end ingest of the 1000-reading run: readings from the first upload received
   to the last one imported, per second, against a raw COPY of as many readings into
   the same shards (split as the devices were, one COPY per shard in parallel);
3. batches of 100 straight to one uWSGI node and to both nodes (each device bound to
   one) against through HAProxy, at the same concurrency and at concurrency 1;
4. a device's read through the router and the fence (`for_device`) against the same
   read with an explicit `.using()`;
5. directory queries per steady-state device upload (bench/django_figures.py);
6. moves under load against raw COPY, and the writer stall for devices of 10,000 and
   1,000,000 readings side by side (bench/move_bench.py),
   and the in-process import against raw COPY (bench/ingest_bench.py);
7. memory (RSS, PSS) per uWSGI worker after the load, and the CPU the load
   generator (Locust, a child process) used in each run, beside the whole machine's.

Every load run is verified afterwards (loadtest/verify.py: acknowledged == stored per
device, none doubled), and its devices are deleted at the end. Writes
bench/results/<timestamp>.json and .md and prints the markdown. Targets and failed
attempts (retried until acknowledged) are reported, never tuned for: the exit status is
0 when the suite ran and every run verified.
"""

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "loadtest"))

# The load test's own runner and verifier (outside clients; no project code).
from host_facts import memory_gib  # noqa: E402  (bench/, the script's own directory)
from run import RunResult, run_locust, verify_run  # noqa: E402
from verify import connect  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
TARGETS = {
    "uploads_per_s_batch_100": 500,
    "p99_ms_batch_100": 200,
    "ingest_of_copy": 0.50,
    "import_lag_p99_s": 2.0,
    "haproxy_overhead": 0.10,
    # A device read through the router and the fence (for_device) against .using().
    "router_overhead": 0.10,
    # Writers held by a move's fence, p99, for every device size moved (bench/move_bench.py).
    "move_stall_ms": 100,
    "move_of_copy": 0.30,
    # Uploads of 100 readings a second against the empty view's requests a second.
    "uploads_of_empty_view": 0.33,
}


# Before each run: the machine counts as quiet below this share of all cores busy.
SETTLED_CPU_SHARE = 0.15
SETTLE_MAX_SECONDS = 90
# The sustainable rate: shares of the flat-out rate offered in turn, and the p99 it must hold.
SUSTAINABLE_STEPS = (0.3, 0.5, 0.7, 0.85, 1.0)
SUSTAINABLE_P99_MS = 100
POOLER_PACED_SHARE = 0.5


def cpu_seconds_of(program: str) -> float:
    """User + system CPU seconds used so far by every live process named `program`."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :]
        if name == program:
            fields = rest.split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Busy CPU seconds of the whole machine (all cores) between start and stop."""

    @staticmethod
    def _busy() -> float:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> "CpuMeter":
        self.started, self.busy0 = time.monotonic(), self._busy()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.monotonic() - self.started
        self.busy = self._busy() - self.busy0

    @property
    def share(self) -> float:
        """How busy all cores were together, 0 to 1."""
        return self.busy / self.seconds / os.cpu_count()


def history(out_dir: Path, name: str) -> list[dict[str, str]]:
    """`name`'s rows of Locust's stats history (one a second), oldest first."""
    import csv

    with (out_dir / "locust_stats_history.csv").open() as handle:
        return [row for row in csv.DictReader(handle) if row["Name"] == name]


def steady_rps(out_dir: Path, name: str, warmup: float = 3.0) -> float:
    """Requests/s of `name` after the warm-up (enrolment) until the end, from the history."""
    points = [
        (int(row["Timestamp"]), int(row["Total Request Count"])) for row in history(out_dir, name)
    ]
    points = [p for p in points if p[1] > 0]
    if len(points) < 2:
        return 0.0
    start = next((p for p in points if p[0] >= points[0][0] + warmup), points[0])
    end = points[-1]
    return (end[1] - start[1]) / (end[0] - start[0]) if end[0] > start[0] else 0.0


def steady_p99(out_dir: Path, name: str) -> float:
    """`name`'s p99 over Locust's last window (its history's last row: the final 10 s),
    which leaves the devices' enrolment storm at the start out."""
    rows = history(out_dir, name)
    return float(rows[-1]["99%"]) if rows else 0.0


def failure_reasons(out_dir: Path) -> dict[str, int]:
    """Locust's failures.csv as {error: occurrences}, errors cut short."""
    import csv

    with (out_dir / "locust_failures.csv").open() as handle:
        return {
            f"{row['Name']}: {row['Error'][:120]}": int(row["Occurrences"])
            for row in csv.DictReader(handle)
        }


class Suite:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.cluster_json: Path = args.cluster_json
        self.info = json.loads(self.cluster_json.read_text())
        self.stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        self.prefix = f"bench-{self.stamp}-"
        self.out = ROOT / "var" / "loadtest" / f"bench-{self.stamp}"
        self.runs: dict[str, dict] = {}
        self.verified_ok = True

    def log(self, message: str) -> None:
        print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)

    # Load runs -------------------------------------------------------------------

    def load(
        self,
        key: str,
        batch: int,
        users: int,
        targets: list[str] | None = None,
        interval: float = 0.0,
    ) -> dict:
        """One swarm run, verified; its figures kept under `key`. `interval` 0: flat out;
        else each device starts an upload every `interval` seconds, the devices' phases
        spread over one interval (they start within it), as a fleet's are, and the
        figures leave that start (enrolments, logins) out."""
        env = {"LOADTEST_BATCH": str(batch), "LOADTEST_INTERVAL": str(interval)}
        if targets:
            env["LOADTEST_TARGETS"] = ",".join(targets)
        out_dir = self.out / key
        self.settle()
        pace = f"one upload per {interval:.3f}s each" if interval else "back to back"
        self.log(
            f"load {key}: {users} devices, {batch} readings a batch, {pace}, {self.args.duration}s"
        )
        with CpuMeter() as cpu:
            result = run_locust(
                "swarm", users, f"{self.args.duration}s", out_dir,
                env={**env, "LOADTEST_RUN": f"{self.prefix}{key}"},
                spawn_rate=users / interval if interval else None,
                reset_stats=bool(interval),
                cluster_json=self.cluster_json,
            )  # fmt: skip
        summary = verify_run(result, self.cluster_json, wait=300)
        self.verified_ok &= summary["ok"]
        upload = result.row("upload")
        upload_name = next(n for n in result.rows if "upload" in n)  # "upload (N readings)"
        figures = {
            "batch": batch,
            "concurrency": users,
            "targets": targets or [self.info["url"].rstrip("/")],
            "seconds": round(result.seconds, 1),
            "uploads": upload["requests"],
            "failed_requests": result.failures,
            "failed_uploads": upload["failures"],
            "failure_reasons": failure_reasons(out_dir),
            "uploads_per_s": steady_rps(out_dir, upload_name),
            "readings_per_s": 0.0,
            "p50_ms": upload["p50_ms"],
            "p95_ms": upload["p95_ms"],
            "p99_ms": upload["p99_ms"],
            "max_ms": upload["max_ms"],
            "locust_cpu_s": round(result.cpu_seconds, 2),
            "locust_cpu_share_of_one_core": round(result.cpu_share, 3),
            "machine_cpu_busy_of_all_cores": round(cpu.share, 3),
            "verified": {k: summary[k] for k in ("ok", "devices", "acknowledged", "stored")},
            "reports": str(out_dir.relative_to(ROOT)),
        }
        figures["readings_per_s"] = figures["uploads_per_s"] * batch
        if interval:
            figures["offered_uploads_per_s"] = users / interval
            figures["steady_p99_ms"] = steady_p99(out_dir, upload_name)
        if summary["failed"]:
            figures["verify_failures"] = summary["failed"][:10]
        self.runs[key] = figures
        self.runs[key]["_result"] = result
        self.log(
            f"  {figures['uploads_per_s']:.0f} uploads/s, p50 {figures['p50_ms']:.0f} ms,"
            f" p99 {figures['p99_ms']:.0f} ms; verified: {summary['ok']}"
        )
        return figures

    def settle(self) -> None:
        """Wait (up to SETTLE_MAX_SECONDS) for the machine to go quiet before a run: after
        a heavy run the cluster's analysis rolls up what it imported for a while, which
        would land in the next run's figures."""
        started = time.monotonic()
        while time.monotonic() - started < SETTLE_MAX_SECONDS:
            with CpuMeter() as cpu:
                time.sleep(2)
            if cpu.share < SETTLED_CPU_SHARE:
                break
        waited = time.monotonic() - started
        if waited > 2.5:
            self.log(f"  waited {waited:.0f}s for the machine to settle")

    def ceiling_figures(self) -> dict:
        """The empty view, flat out at the same concurrency through the same HAProxy."""
        users, seconds = self.args.concurrency, self.args.duration
        out_dir = self.out / "empty_view"
        self.settle()
        self.log(f"load empty_view: {users} clients, GET /healthz, {seconds}s")
        with CpuMeter() as cpu:
            result = run_locust(
                "ceiling", users, f"{seconds}s", out_dir, cluster_json=self.cluster_json
            )
        row = result.row("empty view")
        figures = {
            "requests_per_s": steady_rps(out_dir, "empty view"),
            "p50_ms": row["p50_ms"],
            "p99_ms": row["p99_ms"],
            "requests": row["requests"],
            "failed_requests": row["failures"],
            "locust_cpu_share_of_one_core": round(result.cpu_share, 3),
            "machine_cpu_busy_of_all_cores": round(cpu.share, 3),
        }
        self.log(f"  {figures['requests_per_s']:.0f} requests/s, p99 {figures['p99_ms']:.0f} ms")
        return figures

    # 1b. the sustainable rate ------------------------------------------------------

    def paced(self, key: str, rate: float) -> dict:
        """Batches of 100 offered at `rate` uploads/s by twice the concurrency of devices."""
        users = 2 * self.args.concurrency
        return self.load(key, 100, users, interval=users / rate)

    def sustainable_figures(self) -> dict:
        """The highest offered rate of 100-reading uploads that holds p99 under the goal.

        Paced runs at rising shares of the flat-out rate; a step holds when the cluster
        takes at least 95% of what is offered with p99 under SUSTAINABLE_P99_MS and no
        failed upload; the first step that does not hold ends the search. The p99 is the
        steady one (the run's last 10 s): every device enrols and logs in as the run
        starts, a storm no fleet sends while it reports. Then a run at
        80% of that rate gives the p99 latency and import lag a node shows with room to
        spare, and the devices one node carries at one upload a minute.
        """
        flat_out = self.runs["uploads_100"]["uploads_per_s"]
        steps = []
        sustainable = 0.0
        for share in SUSTAINABLE_STEPS:
            rate = share * flat_out
            run = self.paced(f"paced_{round(share * 100)}", rate)
            holds = (
                run["uploads_per_s"] >= 0.95 * rate
                and run["steady_p99_ms"] < SUSTAINABLE_P99_MS
                and run["failed_uploads"] == 0
            )
            steps.append({"offered": rate, "taken": run["uploads_per_s"],
                          "p99_ms": run["steady_p99_ms"], "holds": holds})  # fmt: skip
            if not holds:
                break
            sustainable = rate
        figures: dict = {"flat_out_uploads_per_s": flat_out, "steps": steps,
                         "sustainable_uploads_per_s": sustainable}  # fmt: skip
        if sustainable:
            run = self.paced("paced_at_80pct", 0.8 * sustainable)
            lags = [row[3] for row in self.imported("paced_at_80pct").values()]
            nodes = len(self.info["app_nodes"])
            figures |= {
                "at_80pct_uploads_per_s": run["uploads_per_s"],
                "at_80pct_p99_ms": run["steady_p99_ms"],
                "at_80pct_import_lag_p99_s": max(lags) if lags else None,
                "app_nodes": nodes,
                "devices_per_node_at_one_upload_a_minute": sustainable * 60 / nodes,
            }
        return figures

    # 1c. the pooler's cost ---------------------------------------------------------

    def cluster_command(self, command: str, env: dict[str, str]) -> None:
        """`python -m cluster COMMAND` with `env` added; fails with its output."""
        proc = subprocess.run(
            [sys.executable, "-m", "cluster", command], cwd=ROOT,
            env={**os.environ, **env}, capture_output=True, text=True, timeout=900,
            check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"cluster {command} failed: {proc.stdout}{proc.stderr}")

    def restart_cluster(self, env: dict[str, str]) -> None:
        """`cluster down` then `up` with `env` added: every process starts afresh."""
        for command in ("down", "up"):
            self.cluster_command(command, env)

    def pooler_figures(self) -> dict:
        """Batches of 100 flat out and paced at half that rate, through the poolers, then
        again with every Django process connected to PostgreSQL directly (the cluster
        restarted with FLEET_POOLER=off), then the cluster put back as it was. Same
        machine, same offered rate, back to back."""
        before = cpu_seconds_of("pgbouncer")
        pooled_flat = self.load("pooled_uploads_100", 100, self.args.concurrency)
        pooler_cpu = cpu_seconds_of("pgbouncer") - before
        # Half the flat-out rate: a load both ways carry, whatever the sustainable search said.
        rate = POOLER_PACED_SHARE * pooled_flat["uploads_per_s"]
        pooled_paced = self.paced("pooled_paced", rate)
        self.log("restarting the cluster without the pooler (FLEET_POOLER=off)")
        self.restart_cluster({"FLEET_POOLER": "off"})
        try:
            direct_flat = self.load("direct_uploads_100", 100, self.args.concurrency)
            direct_paced = self.paced("direct_paced", rate)
        finally:
            self.log("restarting the cluster with its poolers")
            self.restart_cluster({})
        figures = {
            "pooled_uploads_per_s": pooled_flat["uploads_per_s"],
            "direct_uploads_per_s": direct_flat["uploads_per_s"],
            "pooled_p99_ms": pooled_flat["p99_ms"],
            "direct_p99_ms": direct_flat["p99_ms"],
            "pooled_of_direct": pooled_flat["uploads_per_s"] / direct_flat["uploads_per_s"],
            # What the poolers themselves burn in the pooled run: CPU ms per upload, and
            # cores (1.0 = one core busy the whole run).
            "pooler_cpu_ms_per_upload": 1000 * pooler_cpu / max(pooled_flat["uploads"], 1),
            "pooler_cores": pooler_cpu / pooled_flat["seconds"],
            "machine_cpu_busy_pooled": pooled_flat["machine_cpu_busy_of_all_cores"],
            "machine_cpu_busy_direct": direct_flat["machine_cpu_busy_of_all_cores"],
        }
        figures |= {
            "paced_offered_uploads_per_s": rate,
            "pooled_paced_p50_ms": pooled_paced["p50_ms"],
            "direct_paced_p50_ms": direct_paced["p50_ms"],
            "pooled_paced_p99_ms": pooled_paced["steady_p99_ms"],
            "direct_paced_p99_ms": direct_paced["steady_p99_ms"],
        }
        return figures

    # 1d. synchronous replication's cost ---------------------------------------------

    def replication_figures(self) -> dict:
        """Batches of 100 flat out and paced at half that rate on this (plain) cluster, then
        on the replicated shape: the plain cluster stopped, a replicated one started on
        the same ports in a var dir of its own (made afresh), the same runs, and the plain
        cluster started again. Each commit there waits for the standby's flush."""
        plain_flat = self.load("plain_uploads_100", 100, self.args.concurrency)
        rate = POOLER_PACED_SHARE * plain_flat["uploads_per_s"]
        plain_paced = self.paced("plain_paced", rate)
        replicated_var = ROOT / "var" / "bench-replicated"
        replicated = {"FLEET_REPLICAS": "2", "FLEET_VAR_DIR": str(replicated_var)}
        self.log("stopping the cluster; starting the replicated shape on its ports")
        self.cluster_command("down", {})
        plain_json, plain_info = self.cluster_json, self.info
        try:
            self.cluster_command("down", replicated)
            shutil.rmtree(replicated_var, ignore_errors=True)
            self.cluster_command("up", replicated)
            self.cluster_json = replicated_var / "cluster.json"
            self.info = json.loads(self.cluster_json.read_text())
            replicated_flat = self.load("replicated_uploads_100", 100, self.args.concurrency)
            replicated_paced = self.paced("replicated_paced", rate)
        finally:
            self.cluster_json, self.info = plain_json, plain_info
            self.log("stopping the replicated shape; starting the cluster again")
            self.cluster_command("down", replicated)
            self.cluster_command("up", {})
        return {
            "plain_uploads_per_s": plain_flat["uploads_per_s"],
            "replicated_uploads_per_s": replicated_flat["uploads_per_s"],
            "plain_p99_ms": plain_flat["p99_ms"],
            "replicated_p99_ms": replicated_flat["p99_ms"],
            "replicated_of_plain": replicated_flat["uploads_per_s"] / plain_flat["uploads_per_s"],
            "paced_offered_uploads_per_s": rate,
            "plain_paced_p50_ms": plain_paced["p50_ms"],
            "replicated_paced_p50_ms": replicated_paced["p50_ms"],
            "plain_paced_p99_ms": plain_paced["steady_p99_ms"],
            "replicated_paced_p99_ms": replicated_paced["steady_p99_ms"],
            "machine_cpu_busy_plain": plain_flat["machine_cpu_busy_of_all_cores"],
            "machine_cpu_busy_replicated": replicated_flat["machine_cpu_busy_of_all_cores"],
        }

    # 2. end to end against raw COPY ------------------------------------------------

    def run_devices(self, key: str) -> list[int]:
        result: RunResult = self.runs[key]["_result"]
        return [
            int(device)
            for ledger in Path(result.out_dir).glob("ledger-*.json")
            for device in json.loads(ledger.read_text())["devices"]
        ]

    def imported(self, key: str) -> dict[str, tuple]:
        """Per shard, for a run's devices' imported uploads: (readings, first received,
        last imported, import lag p99 in seconds); shards without any left out."""
        device_ids = self.run_devices(key)
        found = {}
        for alias, shard in self.info["shards"].items():
            with connect(shard) as conn, closing(conn.cursor()) as cursor:
                cursor.execute(
                    "SELECT coalesce(sum(reading_count), 0), min(received_at), max(imported_at),"
                    " percentile_cont(0.99) WITHIN GROUP (ORDER BY"
                    "   extract(epoch FROM imported_at - received_at))"
                    " FROM shards_upload WHERE device_id = ANY(%s) AND status = 'imported'",
                    [device_ids],
                )
                readings, first, last, lag = cursor.fetchone()
            if readings:
                found[alias] = (int(readings), first, last, lag or 0.0)
        return found

    def ingest_figures(self, key: str) -> dict:
        """Acknowledged -> imported for a run's devices, and raw COPY of as many readings."""
        imported = self.imported(key)
        per_shard = {alias: row[0] for alias, row in imported.items()}
        firsts = [row[1] for row in imported.values()]
        lasts = [row[2] for row in imported.values()]
        lags = [row[3] for row in imported.values()]
        total = sum(per_shard.values())
        span = (max(lasts) - min(firsts)).total_seconds()
        copy_seconds = self.raw_copy(per_shard)
        e2e = total / span
        copy = total / copy_seconds
        return {
            "run": key,
            "readings": total,
            "readings_by_shard": per_shard,
            "e2e_seconds": round(span, 2),
            "e2e_readings_per_s": e2e,
            "import_lag_p99_s_worst_shard": max(lags),
            "raw_copy_seconds": round(copy_seconds, 3),
            "raw_copy_readings_per_s": copy,
            "ratio": e2e / copy,
        }

    def raw_copy(self, per_shard: dict[str, int]) -> float:
        """COPY the same number of readings into each shard, all shards at once; wall time."""
        fake_device = -int(time.time())  # no device has a negative id; deleted afterwards
        buffers = {
            alias: "".join(
                f"{fake_device}\tm{i % 4}\t"
                f"{(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=i)).isoformat()}\t{i}\n"
                for i in range(count)
            )
            for alias, count in per_shard.items()
        }
        conns = {alias: connect(self.info["shards"][alias]) for alias in per_shard}
        opened = {alias: cm.__enter__() for alias, cm in conns.items()}
        errors: list[BaseException] = []
        barrier = threading.Barrier(len(opened) + 1)

        def copy(alias: str) -> None:
            try:
                conn = opened[alias]
                conn.autocommit = False
                with conn.cursor() as cursor:
                    barrier.wait()
                    cursor.copy_expert(
                        "COPY shards_reading (device_id, metric, ts, value) FROM STDIN",
                        StringIO(buffers[alias]),
                    )
                conn.commit()
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=copy, args=(alias,)) for alias in opened]
        try:
            for thread in threads:
                thread.start()
            barrier.wait()
            started = time.perf_counter()
            for thread in threads:
                thread.join()
            seconds = time.perf_counter() - started
        finally:
            for conn in opened.values():
                conn.autocommit = True
                with conn.cursor() as cursor:
                    cursor.execute("DELETE FROM shards_reading WHERE device_id = %s", [fake_device])
            for cm in conns.values():
                cm.__exit__(None, None, None)
        if errors:
            raise errors[0]
        return seconds

    # 3. direct against HAProxy -----------------------------------------------------

    def haproxy_figures(self) -> dict:
        nodes = [url.rstrip("/") for url in self.info["app_nodes"]]
        through = self.runs["uploads_100"]
        one = self.load("direct_one_node_100", 100, self.args.concurrency, nodes[:1])
        both = self.load("direct_both_nodes_100", 100, self.args.concurrency, nodes)
        serial_proxy = self.load("haproxy_serial_100", 100, 1)
        serial_direct = self.load("direct_serial_100", 100, 1, nodes[:1])
        return {
            "concurrency": self.args.concurrency,
            "haproxy_uploads_per_s": through["uploads_per_s"],
            "one_node_uploads_per_s": one["uploads_per_s"],
            "both_nodes_uploads_per_s": both["uploads_per_s"],
            "haproxy_of_one_node": through["uploads_per_s"] / one["uploads_per_s"],
            "haproxy_of_both_nodes": through["uploads_per_s"] / both["uploads_per_s"],
            "serial_haproxy_p50_ms": serial_proxy["p50_ms"],
            "serial_direct_p50_ms": serial_direct["p50_ms"],
            "serial_latency_ratio": serial_proxy["p50_ms"] / serial_direct["p50_ms"],
            "serial_haproxy_uploads_per_s": serial_proxy["uploads_per_s"],
            "serial_direct_uploads_per_s": serial_direct["uploads_per_s"],
        }

    # In-process figures and the existing benches ------------------------------------

    def django_figure(self, *args: str) -> dict:
        proc = subprocess.run(
            [PYTHON, str(ROOT / "bench" / "django_figures.py"), *args],
            capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def script(self, name: str, *args: str) -> tuple[int, str]:
        self.log(f"bench/{name} {' '.join(args)}")
        proc = subprocess.run(
            [PYTHON, str(ROOT / "bench" / name), *args],
            capture_output=True, text=True, check=False, cwd=ROOT,
        )  # fmt: skip
        if proc.returncode not in (0, 1):
            raise RuntimeError(f"bench/{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return proc.returncode, proc.stdout

    def move_figures(self) -> dict:
        code, text = self.script(
            "move_bench.py", "--readings", str(self.args.move_readings),
            "--rounds", str(self.args.rounds), "--stall-readings", self.args.stall_readings,
        )  # fmt: skip
        raw = re.search(
            r"\| raw COPY between the two servers \| [\d,]+ \| [\d.]+ \| ([\d,]+)", text
        )
        move = re.search(r"\| move_device \(copy.*?\| [\d,]+ \| [\d.]+ \| ([\d,]+) \| (\d+)%", text)
        stall = re.search(r"writer stall \(fenced window\) p99 (\d+) ms", text)
        failed = re.search(r"(\d+) failed uploads", text)
        return {
            "raw_copy_rows_per_s": float(raw.group(1).replace(",", "")) if raw else None,
            "move_rows_per_s": float(move.group(1).replace(",", "")) if move else None,
            "ratio": int(move.group(2)) / 100 if move else None,
            "writer_stall_p99_ms": float(stall.group(1)) if stall else None,
            "failed_uploads": int(failed.group(1)) if failed else None,
            "meets_its_targets": code == 0,
            "report": text,
        }

    def import_figures(self) -> dict:
        _, text = self.script(
            "ingest_bench.py", "--readings", str(self.args.ingest_readings),
            "--rounds", str(self.args.rounds),
        )  # fmt: skip
        found = re.search(r"import_staged runs at (\d+)% .*?together at (\d+)%", text, re.S)
        return {
            "import_of_copy": int(found.group(1)) / 100 if found else None,
            "stage_and_import_of_copy": int(found.group(2)) / 100 if found else None,
            "report": text,
        }

    def memory_figures(self) -> dict:
        """RSS and PSS of each uWSGI worker of the cluster's app nodes (masters apart)."""
        run_dir = str(self.cluster_json.parent / "run")
        procs = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                if "uwsgi" not in cmdline or f"{run_dir}/app-" not in cmdline:
                    continue
                status = dict(
                    line.split(":", 1) for line in (entry / "status").read_text().splitlines()
                )
                rollup = (entry / "smaps_rollup").read_text()
            except (OSError, ValueError):
                continue
            pss = re.search(r"^Pss:\s+(\d+) kB", rollup, re.M)
            procs[int(entry.name)] = {
                "node": re.search(r"app-(\d+)\.ini", cmdline).group(1),
                "ppid": int(status["PPid"].strip()),
                "rss_mib": int(status["VmRSS"].split()[0]) / 1024,
                "pss_mib": int(pss.group(1)) / 1024 if pss else None,
            }
        workers = [p for p in procs.values() if p["ppid"] in procs]
        return {
            "workers": len(workers),
            "rss_mib_median": statistics.median(w["rss_mib"] for w in workers) if workers else None,
            "pss_mib_median": statistics.median(w["pss_mib"] or 0 for w in workers)
            if workers
            else None,
            "per_worker": workers,
        }

    # The whole suite ---------------------------------------------------------------

    def step(self, name: str, results: dict, fn: Callable[[], dict]) -> None:
        """Run one part; a part that breaks is recorded, and the others still run."""
        try:
            results[name] = fn()
        except Exception as exc:  # the report says what broke
            self.log(f"{name} FAILED: {exc!r}")
            results[name] = {"error": repr(exc)}
            self.verified_ok = False

    def run_replication_only(self) -> dict:
        config = {key: str(value) for key, value in vars(self.args).items()}
        results: dict = {"started": self.stamp, "machine": machine(), "config": config}
        self.step("replication", results, self.replication_figures)
        self.step("cleanup", results, lambda: self.django_figure("cleanup", self.prefix))
        for figures in self.runs.values():
            figures.pop("_result", None)
        results |= {"runs": self.runs, "all_runs_verified": self.verified_ok, "targets": {}}
        return results

    def run(self) -> dict:
        results: dict = {"started": self.stamp, "machine": machine(), "config": vars(self.args)}
        with CpuMeter() as idle:  # what else keeps the machine busy before any load
            time.sleep(3)
        results["machine"]["busy_before_load"] = round(idle.share, 3)
        results["config"] = {k: str(v) for k, v in results["config"].items()}
        c = self.args.concurrency
        for batch in (1, 100):
            self.step(
                f"uploads_{batch}", self.runs, lambda b=batch: self.load(f"uploads_{b}", b, c)
            )
        self.step("empty_view", results, self.ceiling_figures)
        self.step("sustainable", results, self.sustainable_figures)
        if not self.args.skip_pooler:
            self.step("pooler", results, self.pooler_figures)
        if not self.args.skip_replication:
            self.step("replication", results, self.replication_figures)
        self.step("haproxy", results, self.haproxy_figures)
        self.step("uploads_1000", self.runs, lambda: self.load("uploads_1000", 1000, c))
        self.step("ingest", results, lambda: self.ingest_figures("uploads_1000"))
        self.step("memory", results, self.memory_figures)
        self.log("router and directory queries (in-process)")
        self.step("router", results, lambda: self.django_figure("router"))
        self.step("directory_queries", results, lambda: self.django_figure("directory-queries"))
        if not self.args.skip_scripts:
            self.step("moves", results, self.move_figures)
            self.step("import", results, self.import_figures)
        self.step("cleanup", results, lambda: self.django_figure("cleanup", self.prefix))
        for figures in self.runs.values():
            figures.pop("_result", None)
        results["runs"] = self.runs
        results["all_runs_verified"] = self.verified_ok
        results["targets"] = {
            name: {"figure": value, "verdict": verdict}
            for name, (value, verdict) in verdicts(results).items()
        }
        return results


def machine() -> dict:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "",
    )
    postgres = subprocess.run(
        ["pg_config", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": memory_gib(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postgres": postgres,
    }


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def num(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def verdicts(results: dict) -> dict[str, tuple[str, str]]:
    """Each target with the figure it is judged on, and whether the figure meets it."""
    out: dict[str, tuple[str, str]] = {}

    def judge(name: str, value: float | None, ok: Callable[[float], bool], shown: str) -> None:
        if value is not None:
            out[name] = (shown, "meets" if ok(value) else "misses")

    run = results["runs"].get("uploads_100", {})
    if "uploads_per_s" in run:
        judge(
            "batches of 100: ≥500 uploads/s via HAProxy", run["uploads_per_s"],
            lambda v: v >= TARGETS["uploads_per_s_batch_100"], f"{run['uploads_per_s']:,.0f}/s",
        )  # fmt: skip
        judge(
            "batches of 100: p99 under 200 ms", run["p99_ms"],
            lambda v: v < TARGETS["p99_ms_batch_100"], f"{run['p99_ms']:.0f} ms",
        )  # fmt: skip
    ceiling = results.get("empty_view", {}).get("requests_per_s")
    if "uploads_per_s" in run and ceiling:
        share = run["uploads_per_s"] / ceiling
        judge(
            "batches of 100: ≥33% of the empty view's requests/s", share,
            lambda v: v >= TARGETS["uploads_of_empty_view"], pct(share),
        )  # fmt: skip
    ratio = results.get("ingest", {}).get("ratio")
    judge("end-to-end ingest ≥50% of raw COPY", ratio,
          lambda v: v >= TARGETS["ingest_of_copy"], pct(ratio))  # fmt: skip
    paced = results.get("sustainable", {})
    judge(
        "at 80% of the sustainable rate: p99 under 100 ms", paced.get("at_80pct_p99_ms"),
        lambda v: v < SUSTAINABLE_P99_MS, f"{paced.get('at_80pct_p99_ms', 0):.0f} ms",
    )  # fmt: skip
    lag = paced.get("at_80pct_import_lag_p99_s")
    judge(
        "at 80% of the sustainable rate: import lag p99 under 2 s", lag,
        lambda v: v < TARGETS["import_lag_p99_s"], f"{lag or 0:.2f} s",
    )  # fmt: skip
    both = results.get("haproxy", {}).get("haproxy_of_both_nodes")
    judge(
        "HAProxy adds under 10% (throughput against both nodes direct)", both,
        lambda v: v >= 1 - TARGETS["haproxy_overhead"],
        f"via HAProxy at {both:.0%} of direct" if both is not None else "",
    )  # fmt: skip
    router = results.get("router", {}).get("ratio")
    judge(
        "a read through the router and the fence adds under 10%", router,
        lambda v: v <= 1 + TARGETS["router_overhead"],
        f"{router - 1:+.1%}" if router is not None else "",
    )  # fmt: skip
    moves = results.get("moves", {})
    stall = moves.get("writer_stall_p99_ms")
    judge(
        "a move holds writers under 100 ms (p99, every device size)", stall,
        lambda v: v < TARGETS["move_stall_ms"], f"{stall:.0f} ms" if stall is not None else "",
    )  # fmt: skip
    judge(
        "a move copies at ≥30% of raw COPY", moves.get("ratio"),
        lambda v: v >= TARGETS["move_of_copy"], pct(moves.get("ratio")),
    )  # fmt: skip
    dq = results.get("directory_queries", {}).get("directory_queries_per_request")
    judge("0 directory queries per steady-state upload", dq, lambda v: v == 0, f"{dq}")
    return out


def markdown(results: dict) -> str:
    """The summary table docs/benchmarks.md shows; each figure with its baseline."""
    runs, m = results["runs"], results["machine"]
    lines = [
        f"Run {results['started']} UTC on {m['cpus']} CPUs ({m['cpu_model']}),"
        f" {m['memory_gib']} GiB, {m['kernel']}, Python {m['python']}, {m['postgres']};"
        f" machine {m.get('busy_before_load', 0):.0%} busy before the load started;"
        f" {results['config']['duration']} s per load run, concurrency"
        f" {results['config']['concurrency']}.",
        "",
        "| # | figure | measured | baseline (same run) | ratio | target |",
        "|---|---|---:|---:|---:|---|",
    ]
    for batch in (1, 100, 1000):
        run = runs.get(f"uploads_{batch}")
        if run is None and results["config"].get("only_replication") == "True":
            continue  # not asked for
        if not run or "uploads_per_s" not in run:
            lines.append(f"| 1 | uploads of {batch} via HAProxy | failed | | | |")
            continue
        target = "≥500/s, p99 <200 ms" if batch == 100 else ""
        lines.append(
            f"| 1 | uploads of {batch} reading{'s' * (batch > 1)} via HAProxy,"
            f" {run['concurrency']} devices | {run['uploads_per_s']:,.0f}/s"
            f" ({run['readings_per_s']:,.0f} readings/s); p50/p95/p99"
            f" {run['p50_ms']:.0f}/{run['p95_ms']:.0f}/{run['p99_ms']:.0f} ms;"
            f" {run['failed_uploads']} of {run['uploads']} attempts failed | | | {target} |"
        )
    ceiling = results.get("empty_view", {})
    if ceiling.get("requests_per_s"):
        lines.append(
            f"| 1 | empty Django view (`GET /healthz`) via HAProxy,"
            f" {results['config']['concurrency']} clients | {ceiling['requests_per_s']:,.0f}/s;"
            f" p50/p99 {ceiling['p50_ms']:.0f}/{ceiling['p99_ms']:.0f} ms;"
            f" {ceiling['failed_requests']} failed | | | the ceiling |"
        )
        for batch in (1, 100, 1000):
            run = runs.get(f"uploads_{batch}", {})
            if "uploads_per_s" in run:
                target = "≥33%" if batch == 100 else ""
                lines.append(
                    f"| 1 | uploads of {batch} against the empty view |"
                    f" {run['uploads_per_s']:,.0f}/s | {ceiling['requests_per_s']:,.0f}/s |"
                    f" {pct(run['uploads_per_s'] / ceiling['requests_per_s'])} | {target} |"
                )
    paced = results.get("sustainable", {})
    for step in paced.get("steps", []):
        lines.append(
            f"| 1 | batches of 100 offered at {step['offered']:,.0f}/s"
            f" ({2 * int(results['config']['concurrency'])} devices, paced) |"
            f" taken {step['taken']:,.0f}/s, steady p99 {step['p99_ms']:.0f} ms |"
            f" flat out: {paced['flat_out_uploads_per_s']:,.0f}/s |"
            f" {pct(step['offered'] / paced['flat_out_uploads_per_s'])} |"
            f" {'holds' if step['holds'] else 'does not hold'} p99 <{SUSTAINABLE_P99_MS} ms |"
        )
    if paced.get("sustainable_uploads_per_s"):
        lines.append(
            f"| 1 | sustainable rate (highest step that holds) |"
            f" {paced['sustainable_uploads_per_s']:,.0f} uploads/s | | | |"
        )
        lines.append(
            f"| 1 | at 80% of it ({paced['at_80pct_uploads_per_s']:,.0f} uploads/s taken) |"
            f" steady p99 {paced['at_80pct_p99_ms']:.0f} ms; import lag p99"
            f" {paced['at_80pct_import_lag_p99_s'] or 0:.2f} s | | | p99 <100 ms, lag <2 s |"
        )
        lines.append(
            f"| 1 | devices one app node carries at one 100-reading upload a minute |"
            f" {paced['devices_per_node_at_one_upload_a_minute']:,.0f}"
            f" | {paced['app_nodes']} nodes | | |"
        )
    replication = results.get("replication", {})
    if "replicated_of_plain" in replication:
        r = replication
        lines.append(
            f"| 1 | batches of 100 flat out, every database a Patroni pair (synchronous"
            f" standby) | {r['replicated_uploads_per_s']:,.0f}/s, p99"
            f" {r['replicated_p99_ms']:.0f} ms | one server per database:"
            f" {r['plain_uploads_per_s']:,.0f}/s, p99 {r['plain_p99_ms']:.0f} ms |"
            f" {pct(r['replicated_of_plain'])} | |"
        )
        lines.append(
            f"| 1 | batches of 100 offered at {r['paced_offered_uploads_per_s']:,.0f}/s,"
            f" replicated | p50 {r['replicated_paced_p50_ms']:.0f} ms, steady p99"
            f" {r['replicated_paced_p99_ms']:.0f} ms | one server per database: p50"
            f" {r['plain_paced_p50_ms']:.0f} ms, steady p99 {r['plain_paced_p99_ms']:.0f} ms"
            f" | | |"
        )
    pool = results.get("pooler", {})
    if "pooled_of_direct" in pool:
        lines.append(
            f"| 1 | batches of 100 flat out through PgBouncer (transaction pooling) |"
            f" {pool['pooled_uploads_per_s']:,.0f}/s, p99 {pool['pooled_p99_ms']:.0f} ms"
            f" | straight to PostgreSQL: {pool['direct_uploads_per_s']:,.0f}/s,"
            f" p99 {pool['direct_p99_ms']:.0f} ms | {pct(pool['pooled_of_direct'])} | |"
        )
        lines.append(
            f"| 1 | CPU the three PgBouncers used in that pooled run |"
            f" {pool['pooler_cpu_ms_per_upload']:.2f} ms per upload,"
            f" {pool['pooler_cores']:.2f} cores | machine busy"
            f" {pool['machine_cpu_busy_pooled']:.0%} pooled,"
            f" {pool['machine_cpu_busy_direct']:.0%} direct | | |"
        )
    if "direct_paced_p99_ms" in pool:
        lines.append(
            f"| 1 | batches of 100 offered at {pool['paced_offered_uploads_per_s']:,.0f}/s"
            f" (half the pooled flat-out rate) through PgBouncer | p50"
            f" {pool['pooled_paced_p50_ms']:.0f} ms, steady p99 {pool['pooled_paced_p99_ms']:.0f}"
            f" ms | straight to PostgreSQL: p50 {pool['direct_paced_p50_ms']:.0f} ms, steady p99"
            f" {pool['direct_paced_p99_ms']:.0f} ms |"
            f" {pool['pooled_paced_p99_ms'] / pool['direct_paced_p99_ms']:.2f}x (p99) | |"
        )
    ingest = results.get("ingest", {})
    if "ratio" in ingest:
        lines.append(
            f"| 2 | end-to-end ingest (first received to last imported),"
            f" {ingest['readings']:,} readings | {ingest['e2e_readings_per_s']:,.0f} readings/s"
            f" | raw COPY into the same shards: {ingest['raw_copy_readings_per_s']:,.0f}/s"
            f" | {pct(ingest['ratio'])} | ≥50% |"
        )
        lines.append(
            f"| 2 | import lag in that run (received to imported, p99 of the slowest shard) |"
            f" {ingest['import_lag_p99_s_worst_shard']:.2f} s | | | |"
        )
    imp = results.get("import", {})
    if imp.get("import_of_copy") is not None:
        lines.append(
            "| 2 | in-process import_staged (bench/ingest_bench.py) | | raw COPY |"
            f" {pct(imp['import_of_copy'])} (stage + import {pct(imp['stage_and_import_of_copy'])})"
            " | ≥50% |"
        )
    hap = results.get("haproxy", {})
    if "haproxy_of_one_node" in hap:
        lines.append(
            f"| 3 | batches of 100 via HAProxy (2 nodes) | {hap['haproxy_uploads_per_s']:,.0f}/s"
            f" | straight to one node: {hap['one_node_uploads_per_s']:,.0f}/s"
            f" | {pct(hap['haproxy_of_one_node'])} | |"
        )
        lines.append(
            f"| 3 | batches of 100 via HAProxy (2 nodes) | {hap['haproxy_uploads_per_s']:,.0f}/s"
            f" | straight to both nodes: {hap['both_nodes_uploads_per_s']:,.0f}/s"
            f" | {pct(hap['haproxy_of_both_nodes'])} | HAProxy adds <10% |"
        )
        lines.append(
            f"| 3 | one device, batches of 100, p50 via HAProxy |"
            f" {hap['serial_haproxy_p50_ms']:.0f} ms | straight to one node:"
            f" {hap['serial_direct_p50_ms']:.0f} ms | {hap['serial_latency_ratio']:.2f}x | |"
        )
    router = results.get("router", {})
    if "ratio" in router:
        lines.append(
            f"| 4 | ORM read through the router and the fence (`for_device`) |"
            f" {router['router_ms']:.3f} ms | explicit `.using()`: {router['using_ms']:.3f} ms"
            f" | {router['ratio']:.2f}x | adds <10% |"
        )
    dq = results.get("directory_queries", {})
    if "requests" in dq:
        lines.append(
            f"| 5 | directory queries per steady-state upload ({dq['requests']} uploads) |"
            f" {dq['directory_queries_per_request']:.2f} | shard queries per upload:"
            f" {dq['shard_queries_per_request']:.1f} | | 0 |"
        )
    moves = results.get("moves", {})
    if moves.get("ratio") is not None:
        lines.append(
            f"| 6 | moving a device (bench/move_bench.py) | {num(moves['move_rows_per_s'])} rows/s"
            f" | raw COPY between the servers: {num(moves['raw_copy_rows_per_s'])} rows/s"
            f" | {pct(moves['ratio'])} | ≥30% |"
        )
        lines.append(
            f"| 6 | writer stall (fenced window) p99, the worst of the device sizes moved"
            f" under load | {num(moves['writer_stall_p99_ms'])} ms"
            f" | {moves['failed_uploads']} failed uploads | | <{TARGETS['move_stall_ms']} ms |"
        )
    mem = results.get("memory", {})
    if mem.get("workers"):
        lines.append(
            f"| 7 | memory per uWSGI worker ({mem['workers']} workers), after the load |"
            f" RSS {mem['rss_mib_median']:.0f} MiB, PSS {mem['pss_mib_median']:.0f} MiB | | | |"
        )
    for key, run in runs.items():
        if "locust_cpu_share_of_one_core" in run:
            lines.append(
                f"| 7 | load generator CPU in run `{key}` |"
                f" {run['locust_cpu_share_of_one_core']:.0%} of one core | whole machine busy:"
                f" {run['machine_cpu_busy_of_all_cores']:.0%} of {m['cpus']} cores | | |"
            )
    verified = [
        f"{key}: {run['verified']['acknowledged']:,}/{run['verified']['stored']:,}"
        for key, run in runs.items()
        if "verified" in run
    ]
    failed = {k: r["failure_reasons"] for k, r in runs.items() if r.get("failure_reasons")}
    if failed:
        lines += ["", "Failed attempts (each retried with its batch id until acknowledged):"]
        for key, reasons in failed.items():
            for reason, count in reasons.items():
                lines.append(f"- `{key}`: {count} x {reason}")
    lines += ["", "Targets:"]
    for name, (value, verdict) in verdicts(results).items():
        lines.append(f"- {name}: {value} ({verdict})")
    lines += [
        "",
        f"Verified after every load run (readings acknowledged/stored):"
        f" {'; '.join(verified)}; all exact: {results['all_runs_verified']}.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=20, help="Seconds per load run.")
    parser.add_argument("--concurrency", type=int, default=32, help="Devices sending at once.")
    parser.add_argument("--ingest-readings", type=int, default=200_000)
    parser.add_argument("--move-readings", type=int, default=200_000)
    parser.add_argument(
        "--stall-readings", default="10000,1000000", help="Sizes of the devices moved under load."
    )
    parser.add_argument("--rounds", type=int, default=3, help="Rounds of the script benches.")
    parser.add_argument("--skip-scripts", action="store_true", help="No move/ingest benches.")
    parser.add_argument(
        "--skip-pooler", action="store_true", help="No runs without the pooler (no restarts)."
    )
    parser.add_argument(
        "--skip-replication",
        action="store_true",
        help="No runs on the replicated shape (no restarts).",
    )
    parser.add_argument(
        "--only-replication",
        action="store_true",
        help="Only the replication step (its plain and replicated runs).",
    )
    parser.add_argument("--quick", action="store_true", help="Short runs, small benches.")
    parser.add_argument("--cluster-json", type=Path, default=ROOT / "var" / "cluster.json")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.ingest_readings, args.move_readings, args.rounds = 8, 20_000, 20_000, 1
        args.stall_readings = "10000,100000"
    if not args.cluster_json.exists():
        print(f"{args.cluster_json} is missing: run `make up` first", file=sys.stderr)
        return 2
    suite = Suite(args)
    results = suite.run_replication_only() if args.only_replication else suite.run()
    table = markdown(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{suite.stamp}.json").write_text(json.dumps(results, indent=1, default=str))
    (RESULTS / f"{suite.stamp}.md").write_text(table + "\n")
    print(table)
    print(f"\nbench/results/{suite.stamp}.json and .md; load reports under {suite.out}")
    return 0 if results["all_runs_verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
