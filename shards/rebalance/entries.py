"""The entries of a run's plan (Rebalance.plan) and making one planned move.

An entry is a planned move with its outcome: pending until its move ends, then
moved, failed or skipped (the world changed since the plan), with the move job
and the error. Only the run's coordinating thread writes entries to the row;
a move's thread works on a copy and hands it back.
"""

from typing import Any

from core.models import MoveJob, Placement, Rebalance, Shard
from shards.moves.protocol import MoveError, PhaseCallback, move_device
from shards.rebalance.planner import Plan

PENDING, MOVED, FAILED, SKIPPED = "pending", "moved", "failed", "skipped"
Entry = dict[str, Any]


def plan_entries(plan: Plan) -> list[Entry]:
    """The plan as stored in Rebalance.plan: each move with its outcome, pending at first."""
    return [{**move.as_json(), "status": PENDING, "job": None, "error": ""} for move in plan.moves]


def why_skip(entry: Entry) -> str:
    """A reason not to make a planned move any more (the world changed since the plan)."""
    placement = Placement.objects.filter(device_id=entry["device"]).first()
    if placement is None:
        return "the device no longer exists"
    if placement.shard_id != entry["source"]:
        return f"the device is on {placement.shard_id} now, not {entry['source']}"
    if placement.pinned and not entry.get("pinned"):
        return "the device was pinned after the plan was made"
    if Shard.objects.filter(alias=entry["target"], weight=0).exists():
        return f"{entry['target']} has weight 0 now (dedicated)"
    busy = MoveJob.objects.filter(device_id=entry["device"], phase__in=MoveJob.IN_FLIGHT).first()
    if busy is not None:
        return f"the device is being moved by move job {busy.pk}"
    return ""


def make_move(run: Rebalance, entry: Entry, on_phase: PhaseCallback | None) -> MoveJob | None:
    """Make one planned move and write its outcome into the entry; the job, if one was made."""
    reason = why_skip(entry)
    if reason:
        entry.update(status=SKIPPED, error=reason)
        return None
    try:
        job = move_device(
            entry["device"],
            entry["target"],
            rebalance=run,
            requested_by=f"{run.kind} {run.pk}",
            on_phase=on_phase,
        )
    except MoveError as exc:
        job = run.moves.filter(device_id=entry["device"]).order_by("-id").first()
        entry.update(status=FAILED, error=str(exc), job=job.pk if job else None)
        return job
    entry.update(status=MOVED, job=job.pk, error="")
    return job
