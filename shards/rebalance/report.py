"""How plans and runs are shown to operators: aligned tables for people, dicts for --json."""

from collections import Counter
from typing import Any

from django.utils import timezone

from core.models import MoveJob, Rebalance, Shard
from shards.moves.report import job_summary, rows_moved
from shards.rebalance.entries import MOVED, PENDING
from shards.rebalance.locks import ACTIVE_STATES, lock_holder
from shards.rebalance.options import RunOptions
from shards.rebalance.planner import Plan

STATUSES = ("moved", "failed", "skipped", "pending")


def table(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows of cells as left-aligned columns (the first row is the header)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def _device(entry: dict[str, Any]) -> str:
    return f"{entry['serial']} ({entry['device']})" if entry.get("serial") else str(entry["device"])


def _amount(value: float) -> str:
    """A cost as a whole number, unless rounding would hide a fraction that matters."""
    return (
        f"{value:.0f}" if abs(value - round(value)) < 0.05 or abs(value) >= 100 else f"{value:.1f}"
    )


def _percent(part: float, whole: float) -> str:
    return f"{part / whole:.1%}" if whole else "0.0%"


def plan_lines(plan: Plan, cost: str) -> list[str]:
    """The moves, then each shard's load before and after, then why planning stopped."""
    lines = []
    if plan.moves:
        rows = [("#", "device", "from", "to", cost)]
        for number, move in enumerate(plan.moves, 1):
            entry = move.as_json()
            pinned = " (pinned)" if move.pinned else ""
            rows.append(
                (str(number), _device(entry) + pinned, move.source, move.target, str(move.cost))
            )
        lines += table(rows)
    else:
        lines.append("no moves planned")
    lines.append("")
    lines += load_lines(plan.loads_before, plan.loads_after, plan.targets, cost)
    lines.append(
        f"on the wrong shard: {_amount(plan.imbalance_before)} ->"
        f" {_amount(plan.imbalance_after)} {cost}"
        f" ({_percent(plan.imbalance_before, plan.total)} -> "
        f"{_percent(plan.imbalance_after, plan.total)} of {plan.total});"
        f" planning stopped: {plan.stop_reason}"
    )
    for device in plan.blocked:
        lines.append(f"pinned, stays: {_device(device.as_json())}")
    for device in plan.busy:
        lines.append(f"being moved, left alone: {_device(device.as_json())}")
    return lines


def load_lines(
    before: dict[str, int],
    after: dict[str, int],
    targets: dict[str, float] | None,
    cost: str,
) -> list[str]:
    shards = {shard.alias: shard for shard in Shard.objects.filter(alias__in=list(before))}
    header = ("shard", "state", "weight", *(("target",) if targets else ()), f"{cost} before")
    rows = [(*header, "after")]
    for alias in sorted(before):
        shard = shards.get(alias)
        target = (_amount(targets.get(alias, 0)),) if targets else ()
        rows.append(
            (
                alias,
                shard.state if shard else "?",
                str(shard.weight) if shard else "?",
                *target,
                str(before[alias]),
                str(after.get(alias, before[alias])),
            )
        )
    return table(rows)


def loads_after(run: Rebalance, *, planned: bool = False) -> dict[str, int]:
    """Loads after the moves made (or, with `planned`, after every planned move)."""
    loads = dict(run.loads_before)
    for entry in run.plan:
        if planned or entry["status"] == MOVED:
            loads[entry["source"]] = loads.get(entry["source"], 0) - entry["cost"]
            loads[entry["target"]] = loads.get(entry["target"], 0) + entry["cost"]
    return loads


def counts(run: Rebalance) -> dict[str, int]:
    tally = Counter(entry["status"] for entry in run.plan)
    return {"planned": len(run.plan), **{status: tally.get(status, 0) for status in STATUSES}}


def held_now(run: Rebalance, holder: str | None) -> float | None:
    """Seconds the throttle has held the run's new moves so far in the current hold.

    None when it holds nothing, and for a run no process runs (a hold its dead
    runner left behind holds nothing; a resume clears it).
    """
    if not run.held or run.held_since is None or holder is None:
        return None
    return max(0.0, (timezone.now() - run.held_since).total_seconds())


def run_summary(run: Rebalance) -> dict[str, Any]:
    """Everything about a run for --json: plan with outcomes, move jobs, loads."""
    holder = lock_holder(run.pk)
    jobs = list(run.moves.order_by("id"))
    return {
        "run": run.pk,
        "kind": run.kind,
        "state": run.state,
        "cost": run.cost,
        "options": RunOptions.from_json(run.options).as_json(),
        "running_in": holder,
        "interrupted": run.state in ACTIVE_STATES and holder is None,
        "created_at": run.created_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "error": run.error,
        "held": run.held if holder else "",
        "held_since": run.held_since.isoformat() if run.held_since and holder else None,
        "held_seconds": run.held_seconds + (held_now(run, holder) or 0.0),
        "counts": counts(run),
        "plan": run.plan,
        "moves": [job_summary(job) for job in jobs],
        "in_flight": [job.pk for job in jobs if job.phase in MoveJob.IN_FLIGHT],
        "loads_before": run.loads_before,
        "loads_after": loads_after(run),
        "planned_loads_after": loads_after(run, planned=True),
    }


def _head(run: Rebalance, holder: str | None) -> str:
    if run.state == Rebalance.State.QUEUED:
        where = ", waiting for a Celery worker" if not holder else f", starting in {holder}"
    elif run.state in ACTIVE_STATES:
        where = f", in {holder}" if holder else ", INTERRUPTED (`rebalance --resume` continues it)"
    else:
        where = ""
    return (
        f"{run.kind} {run.pk}: {run.state}{where}; by {run.cost}, started"
        f" {timezone.localtime(run.created_at):%Y-%m-%d %H:%M:%S %Z}"
    )


def run_lines(run: Rebalance) -> list[str]:
    """A run's state, settings and tally, each planned move with its job, and the loads."""
    tally = counts(run)
    holder = lock_holder(run.pk)
    jobs = {job.pk: job for job in run.moves.order_by("id")}
    latest = {job.device_id: job for job in jobs.values()}
    in_flight = [job for job in jobs.values() if job.phase in MoveJob.IN_FLIGHT]
    tallies = ", ".join(f"{tally[s]} {s}" for s in STATUSES if tally[s] or s == "moved")
    lines = [
        _head(run, holder),
        f"{tally['planned']} planned: {tallies}; {len(in_flight)} in flight",
        f"moves: {RunOptions.from_json(run.options).describe()}",
    ]
    held = held_now(run, holder)
    if held is not None:
        lines.append(f"HELD for {held:.0f} s: {run.held}; no new move starts until it clears")
    if run.held_seconds + (held or 0.0) >= 0.5:
        lines.append(f"the throttle held new moves for {run.held_seconds + (held or 0.0):.0f} s")
    rows = [("device", "from", "to", "cost", "outcome", "job", "phase", "rows copied", "stall")]
    for entry in run.plan:
        job = jobs.get(entry.get("job"))
        outcome = entry["status"]
        if job is None and outcome == PENDING:
            job = latest.get(entry["device"])
            if job is not None and job.phase in MoveJob.IN_FLIGHT:
                outcome = "moving"
        stall = f"{job.stall_ms:.0f} ms" if job and job.stall_ms is not None else "-"
        rows.append(
            (
                _device(entry),
                entry["source"],
                entry["target"],
                str(entry["cost"]),
                outcome,
                str(job.pk) if job else "-",
                job.phase if job else "-",
                str(rows_moved(job)) if job else "-",
                stall,
            )
        )
    lines += ["  " + line for line in table(rows)]
    for entry in run.plan:
        if entry.get("error"):
            lines.append(f"  {_device(entry)} {entry['status']}: {entry['error']}")
    lines += load_lines(run.loads_before, loads_after(run), None, run.cost)
    if run.error and run.state == Rebalance.State.FAILED:
        lines.append(f"error: {run.error}")
    return lines
