"""Parallel, throttled runs for real: several moves at once between real PostgreSQL shards.

Whether moves overlapped is read from their jobs' timestamps in the directory
(created, then last written when writers were released), so what is checked is
what the movers did, not what the runner meant to do. Moves of the tiny test
devices take a fraction of a second, so tests that need them to overlap hold
each move for a moment at its first phase (an observer's phase callback).
"""

import itertools
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from django.core.management.base import CommandError
from django.db import connections, transaction
from django.utils import timezone

from core import local_cluster
from core.models import MoveJob, Placement, Rebalance
from shards.fence import lock_fence
from shards.ingest import import_upload_now
from shards.models import Upload
from shards.rebalance.background import run_queued
from shards.rebalance.costs import gather_fleet
from shards.rebalance.entries import MOVED, PENDING, SKIPPED
from shards.rebalance.locks import exclusive_runner, lock_holder
from shards.rebalance.observer import Observer
from shards.rebalance.options import RunOptions
from shards.rebalance.planner import Plan, PlannedMove, plan_rebalance
from shards.rebalance.runner import create_run, execute, request_stop
from shards.rebalance.throttle import ImportLag, RowPacer
from shards.stats import import_lag_seconds
from tests.factories import make_device
from tests.move_helpers import Background, fence_states, readings_for, store_staged
from tests.process_env import child_process_env
from tests.test_rebalance import make_devices, owned_readings, placements, run, run_json
from tests.waiting import wait_until

Phase = MoveJob.Phase


class Recorder(Observer):
    """Holds every move `pause` seconds once it is copying; remembers holds and starts."""

    def __init__(self, pause: float = 0.0) -> None:
        self.pause = pause
        self.started: list[dict] = []
        self.holds: list[str] = []

    def move_started(self, entry):
        self.started.append(entry)

        def on_phase(job: MoveJob) -> None:
            if job.phase == Phase.COPYING and self.pause:
                time.sleep(self.pause)

        return on_phase

    def run_held(self, run, reason: str) -> None:
        self.holds.append(reason)


def run_plan(plan: Plan, options: RunOptions, observer: Observer | None = None) -> Rebalance:
    """Record the plan as a run and make its moves here, as the rebalance command does."""
    with exclusive_runner() as lock:
        run_row = create_run(lock, kind="rebalance", cost="rows", plan=plan, options=options)
        return execute(run_row, lock, observer)


def plan_rows(*moves: tuple[int, str, str, int]) -> Plan:
    """A hand-made plan: (device, source, target, rows) in this order."""
    planned = [PlannedMove(d, f"d{d}", source, target, rows) for d, source, target, rows in moves]
    return Plan(planned, {}, {}, {}, sum(m.cost for m in planned), "by hand")


def job_spans(run_row: Rebalance) -> list[tuple[MoveJob, float, float]]:
    """Each job of the run with when it was created and when it last changed (released)."""
    return [
        (job, job.created_at.timestamp(), job.updated_at.timestamp())
        for job in run_row.moves.order_by("id")
    ]


def most_at_once(spans: list[tuple[MoveJob, float, float]], key=lambda job: "all") -> dict:
    """The most jobs in flight at the same moment, per key (source, target, device...)."""
    events = sorted(
        [(start, 1, key(job)) for job, start, _ in spans]
        + [(end, -1, key(job)) for job, _, end in spans]
    )  # at a tie the end (-1) sorts first: touching spans do not overlap
    now: Counter = Counter()
    most: Counter = Counter()
    for _, step, group in events:
        now[group] += step
        most[group] = max(most[group], now[group])
    return dict(most)


@pytest.fixture
def six_on_shard_1(three_shards) -> list[int]:
    """Six devices of 20 readings on shard_1: a rows rebalance moves four of them."""
    return make_devices("shard_1", [20] * 6)


class MeetAtCopying(Observer):
    """The first `parties` moves wait at 'copying' until all of them are there: only moves
    running side by side can all arrive. The status is read while they wait."""

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, action=self.read_status, timeout=20)
        self.started = 0
        self.status_text = ""
        self.status: dict = {}

    def read_status(self) -> None:
        self.status_text = run("rebalance", "--status")
        self.status = run_json("rebalance", "--status")["runs"][0]

    def move_started(self, entry):
        self.started += 1
        meets = self.started <= self.barrier.parties

        def on_phase(job: MoveJob) -> None:
            if job.phase == Phase.COPYING and meets:
                self.barrier.wait()

        return on_phase


def test_moves_run_side_by_side_and_status_shows_each_in_flight(three_shards, six_on_shard_1):
    before = owned_readings(three_shards)
    shards, devices = gather_fleet("rows")
    plan = plan_rebalance(shards, devices)
    assert len(plan.moves) == 4
    meet = MeetAtCopying(3)

    run_row = run_plan(plan, RunOptions(parallel=3, max_per_source=3), meet)

    assert run_row.state == "finished"
    assert [entry["status"] for entry in run_row.plan] == [MOVED] * 4
    assert most_at_once(job_spans(run_row)) == {"all": 3}
    # What --status showed while three moves waited at 'copying'.
    assert "4 planned: 0 moved, 4 pending; 3 in flight" in meet.status_text
    assert "up to 3 moves at once, at most 3 out of and 2 into any one shard" in meet.status_text
    moving = [line for line in meet.status_text.splitlines() if " moving " in line]
    assert len(moving) == 3 and all("copying" in line for line in moving)
    assert len(meet.status["in_flight"]) == 3
    assert owned_readings(three_shards) == before
    where = placements()
    assert all(where[entry["device"]] == entry["target"] for entry in run_row.plan)


def test_limits_per_source_target_and_device_hold(three_shards):
    a, b, c, d = make_devices("shard_1", [5] * 4)
    e, f = make_devices("shard_2", [5] * 2)
    plan = plan_rows(
        (a, "shard_1", "shard_2", 5),
        (a, "shard_1", "shard_3", 5),  # the same device again: never at the same time
        (b, "shard_1", "shard_3", 5),
        (c, "shard_1", "shard_2", 5),
        (d, "shard_1", "shard_3", 5),
        (e, "shard_2", "shard_3", 5),
        (f, "shard_2", "shard_3", 5),
    )

    run_row = run_plan(
        plan, RunOptions(parallel=4, max_per_source=2, max_per_target=2), Recorder(pause=0.4)
    )

    spans = job_spans(run_row)
    by_source = most_at_once(spans, key=lambda job: job.source_id)
    by_target = most_at_once(spans, key=lambda job: job.target_id)
    # a, b and e start together: shard_1 gives two, shard_3 takes two, c, d and f wait.
    assert by_source["shard_1"] == 2 and max(by_source.values()) == 2, by_source
    assert by_target["shard_3"] == 2 and max(by_target.values()) == 2, by_target
    assert 3 <= most_at_once(spans)["all"] <= 4
    statuses = [entry["status"] for entry in run_row.plan]
    assert statuses == [MOVED, SKIPPED, MOVED, MOVED, MOVED, MOVED, MOVED]
    assert run_row.plan[1]["error"] == "the device is on shard_2 now, not shard_1"
    assert MoveJob.objects.filter(device_id=a).count() == 1
    assert placements() == {a: "shard_2", b: "shard_3", c: "shard_2", d: "shard_3"} | {
        e: "shard_3",
        f: "shard_3",
    }


class StopWhenTwoStarted(Recorder):
    def move_started(self, entry):
        on_phase = super().move_started(entry)
        if len(self.started) == 2:
            self.stop = request_stop()  # as `rebalance --stop` from another terminal
        return on_phase


def test_stop_lets_the_moves_in_flight_finish_and_starts_no_more(three_shards, six_on_shard_1):
    shards, devices = gather_fleet("rows")
    observer = StopWhenTwoStarted(pause=0.3)

    run_row = run_plan(plan_rebalance(shards, devices), RunOptions(parallel=2), observer)

    assert "it starts no new move and stops once the" in observer.stop[1]
    assert run_row.state == "stopped" and run_row.finished_at is not None
    assert [entry["status"] for entry in run_row.plan] == [MOVED, MOVED, PENDING, PENDING]
    assert set(run_row.moves.values_list("phase", flat=True)) == {Phase.RELEASED}
    assert run_row.moves.count() == 2


def test_throttle_holds_new_moves_while_the_import_lag_is_high(shards):
    make_devices("shard_1", [10] * 4)
    waiting = make_device(shard="shard_2").device
    late = store_staged(waiting.pk, "late", readings_for(0, 2))
    Upload.objects.on_shard("shard_2").filter(pk=late.pk).update(
        received_at=timezone.now() - timedelta(seconds=60)
    )
    assert import_lag_seconds("shard_2") >= 60
    fleet_shards, devices = gather_fleet("rows")
    plan = plan_rebalance(fleet_shards, devices)
    assert {move.target for move in plan.moves} == {"shard_2"}
    observer = Recorder()
    runner = Background(lambda: run_plan(plan, RunOptions(max_import_lag=5), observer))
    runner.start()

    def held() -> str:
        return Rebalance.objects.values_list("held", flat=True).first() or ""

    wait_until(lambda: "import lag" in held(), "the run to be held by shard_2's import lag")
    assert held().startswith("shard_2's import lag is 6")
    assert "over --max-import-lag 5 s" in held()
    status = run("rebalance", "--status")
    assert "HELD for" in status and "shard_2's import lag" in status
    time.sleep(1.5)  # the lag is measured again every second: still over, still held
    assert not MoveJob.objects.exists()

    assert import_upload_now(waiting.pk, late.pk) == Upload.Status.IMPORTED
    run_row = runner.outcome()

    assert run_row.state == "finished"
    assert [entry["status"] for entry in run_row.plan] == [MOVED] * len(plan.moves)
    run_row.refresh_from_db()
    assert run_row.held == "" and run_row.held_since is None and run_row.held_seconds >= 1.5
    assert observer.holds[-1] == ""
    assert "the throttle held new moves for" in run("rebalance", "--status")


def test_max_rows_per_second_spaces_the_starts(shards):
    a, b, c = make_devices("shard_1", [30] * 3)
    plan = plan_rows(
        (a, "shard_1", "shard_2", 30), (b, "shard_1", "shard_2", 30), (c, "shard_1", "shard_2", 30)
    )
    observer = Recorder()
    options = RunOptions(parallel=3, max_per_source=3, max_per_target=3, max_rows_per_second=60)

    run_row = run_plan(plan, options, observer)

    starts = [start for _, start, _ in job_spans(run_row)]
    # 30 rows at 60 a second: each move delays the next start by half a second.
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert len(gaps) == 2 and min(gaps) >= 0.4, gaps
    assert "pacing the moves to --max-rows-per-second 60" in observer.holds
    assert run_row.held_seconds > 0.5
    assert [entry["status"] for entry in run_row.plan] == [MOVED] * 3


def test_the_import_lag_counts_only_devices_the_shard_owns(shards):
    device = make_device(shard="shard_1").device
    staged = store_staged(device.pk, "staged", readings_for(0, 2))
    Upload.objects.on_shard("shard_1").filter(pk=staged.pk).update(
        received_at=timezone.now() - timedelta(seconds=30)
    )
    assert 30 <= import_lag_seconds("shard_1") < 40
    assert import_lag_seconds("shard_2") == 0

    run("move_device", str(device.pk), "shard_2")

    # The staged copy left on shard_1 until cleanup is never imported there.
    assert import_lag_seconds("shard_1") == 0
    assert 30 <= import_lag_seconds("shard_2") < 40


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_row_pacer_spaces_starts_by_rows_and_corrects_to_what_was_copied():
    clock = FakeClock()
    pacer = RowPacer(100, clock)
    assert pacer.wait_seconds() == 0  # the first move starts at once
    pacer.charge(50)
    assert pacer.wait_seconds() == 0.5
    clock.now += 0.5
    assert pacer.wait_seconds() == 0
    pacer.charge(50)
    pacer.correct(charged=50, actual=150)  # it copied more than planned: wait longer
    assert pacer.wait_seconds() == 1.5
    clock.now += 60  # idle time is not saved up for a burst
    pacer.charge(100)
    assert pacer.wait_seconds() == 1.0
    unlimited = RowPacer(0, clock)
    unlimited.charge(10**9)
    assert unlimited.wait_seconds() == 0


def test_import_lag_is_measured_once_a_second_and_an_unreadable_shard_is_held():
    clock = FakeClock()
    lags = {"shard_1": 3.0, "shard_2": 12.5}
    asked: list[str] = []

    def measure(alias: str) -> float:
        asked.append(alias)
        if alias == "shard_9":
            raise OSError("connection refused")
        return lags[alias]

    lag = ImportLag(10, measure=measure, clock=clock)
    assert lag.over("shard_1") == ""
    assert lag.over("shard_2") == "shard_2's import lag is 12.5 s, over --max-import-lag 10 s"
    assert "cannot be read (connection refused)" in lag.over("shard_9")
    lags["shard_2"] = 1.0
    clock.now += 0.5
    assert lag.over("shard_2").startswith("shard_2's import lag is 12.5")  # not asked again yet
    clock.now += 0.5
    assert lag.over("shard_2") == ""
    assert asked == ["shard_1", "shard_2", "shard_9", "shard_2"]
    assert ImportLag(0, measure=measure).over("shard_2") == ""  # 0: not watched


def movers_waiting_for_a_lock(alias: str) -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'fleet-mover' AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


class WriterHoldingFence(threading.Thread):
    """A writer in a transaction on the device's fence row (FOR SHARE), until released."""

    def __init__(self, device_id: int, alias: str) -> None:
        super().__init__(daemon=True)
        self.device_id, self.alias = device_id, alias
        self.holding, self.release = threading.Event(), threading.Event()

    def run(self) -> None:
        try:
            with transaction.atomic(using=self.alias):
                lock_fence(self.device_id, self.alias)
                self.holding.set()
                self.release.wait(60)
        finally:
            connections.close_all()

    def stop(self) -> None:
        self.release.set()
        self.join(10)


@pytest.mark.slow
def test_kill_9_with_moves_in_flight_then_resume(three_shards, six_on_shard_1):
    before = owned_readings(three_shards)
    planned = run_json("rebalance", "--dry-run", "--max-moves", "4")["plan"]["moves"]
    first_three = [move["device"] for move in planned[:3]]
    writers = [WriterHoldingFence(device, "shard_1") for device in first_three]
    for writer in writers:
        writer.start()
        assert writer.holding.wait(10)
    runner = subprocess.Popen(
        [
            *(sys.executable, "manage.py", "rebalance", "--max-moves", "4", "--json"),
            *("--parallel", "3", "--max-per-source", "3", "--max-per-target", "3"),
        ],
        cwd=local_cluster.REPO_ROOT,
        env={**child_process_env(), "FLEET_MOVE_CRASH_AFTER": Phase.FENCED},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Three moves start and wait for the writers; the fourth has no slot.
        wait_until(lambda: movers_waiting_for_a_lock("shard_1") == 3, "three movers waiting")
        writers[0].stop()  # its move goes on, fences the device and the runner dies: kill -9
        out, err = runner.communicate(timeout=60)
    finally:
        runner.kill()
        for writer in writers:
            writer.stop()
    assert runner.returncode == -signal.SIGKILL, (out, err)

    run_row = Rebalance.objects.get()
    wait_until(lambda: lock_holder(run_row.pk) is None, "the dead runner's locks to go")
    jobs = {job.device_id: job for job in run_row.moves.all()}
    assert sorted(jobs) == sorted(first_three)
    assert [jobs[device].phase for device in first_three] == [
        Phase.FENCED,
        Phase.CREATED,
        Phase.CREATED,
    ]
    status = run("rebalance", "--status")
    assert "INTERRUPTED" in status and "3 in flight" in status

    result = run_json("rebalance", "--resume")

    resumed = result["resumed_jobs"]
    assert resumed[0]["job"] == jobs[first_three[0]].pk  # the one holding writers goes first
    assert [job["phase"] for job in resumed] == ["released"] * 3
    (summary,) = result["runs"]
    assert summary["state"] == "finished" and summary["counts"]["moved"] == 4
    assert summary["options"]["parallel"] == 3
    where = placements()
    for move in planned:
        states = fence_states(three_shards, move["device"])
        owners = [alias for alias, state in states.items() if state == "active"]
        assert owners == [move["target"]] == [where[move["device"]]], states
    assert owned_readings(three_shards) == before


def test_a_queued_run_is_refused_in_the_way_run_by_resume_or_stopped(three_shards, six_on_shard_1):
    shards, devices = gather_fleet("rows")
    plan = plan_rebalance(shards, devices, max_moves=2)
    with exclusive_runner() as lock:
        queued = create_run(lock, kind="rebalance", cost="rows", plan=plan, queued=True)
    assert lock_holder(queued.pk) is None

    assert "waiting for a Celery worker" in run("rebalance", "--status")
    with pytest.raises(CommandError, match=f"rebalance {queued.pk} is queued for a Celery worker"):
        run("rebalance")
    result = run_json("rebalance", "--resume", "--parallel", "1")
    (summary,) = result["runs"]
    assert summary["run"] == queued.pk and summary["state"] == "finished"
    assert summary["counts"]["moved"] == 2 and summary["options"]["parallel"] == 1
    assert run_queued(queued.pk) == "finished"  # the task arriving late changes nothing

    with exclusive_runner() as lock:
        cancelled = create_run(lock, kind="rebalance", cost="rows", plan=plan, queued=True)
    answer = run_json("rebalance", "--stop")
    assert answer["run"] == cancelled.pk and answer["state"] == "stopped"
    assert "was queued, not started" in answer["message"]
    assert run_queued(cancelled.pk) == "stopped"
    assert not cancelled.moves.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--parallel", "0"], "--parallel must be 1 or more, not 0"),
        (["--max-per-target", "0"], "--max-per-target must be 1 or more"),
        (["--max-import-lag", "-1"], "--max-import-lag must be 0 (off) or more"),
        (["--max-rows-per-second", "-5"], "--max-rows-per-second must be 0 (off) or more"),
        (["--status", "--parallel", "2"], "--stop and --status take none of the options"),
        (["--dry-run", "--background"], "--dry-run changes nothing"),
    ],
    ids=["parallel-0", "per-target-0", "lag-negative", "rows-negative", "status", "dry-run"],
)
def test_bad_run_options_are_refused_before_anything_changes(shards, args, message):
    make_devices("shard_1", [5] * 2)
    with pytest.raises(CommandError, match=re.escape(message)):
        run("rebalance", *args)
    assert not Rebalance.objects.exists() and not MoveJob.objects.exists()


def test_background_rebalance_and_drain_run_on_a_celery_worker(three_shards, celery_worker):
    make_devices("shard_1", [10] * 6)

    queued = run_json("rebalance", "--background", "--parallel", "3", "--max-per-target", "3")

    summary = queued["run"]
    assert summary["state"] == "queued" and summary["options"]["parallel"] == 3
    run_row = Rebalance.objects.get(pk=summary["run"])
    wait_until(
        lambda: Rebalance.objects.get(pk=run_row.pk).state == "finished",
        "the worker to finish the rebalance",
    )
    run_row.refresh_from_db()
    assert [entry["status"] for entry in run_row.plan] == [MOVED] * len(run_row.plan)
    assert Counter(placements().values()) == {"shard_1": 2, "shard_2": 2, "shard_3": 2}

    drained = run_json("drain_shard", "shard_3", "--background", "--parallel", "2")

    assert drained["queued"] and "Celery worker" in drained["message"]
    wait_until(
        lambda: Rebalance.objects.filter(kind="drain:shard_3", state="finished").exists(),
        "the worker to drain shard_3",
    )
    drain = Rebalance.objects.get(kind="drain:shard_3")
    assert drain.options["parallel"] == 2 and drain.options["max_per_source"] == 2
    assert not Placement.objects.filter(shard_id="shard_3").exists()
