"""Draining a shard: take no new devices, move every device off, retire it once it is empty.

A draining shard gets no new devices (placement and create_device take active
shards only) and no moves in. Its devices move off as a recorded run of kind
`drain:<alias>` (shards.rebalance.runner). The shard is retired only when the
directory places nothing on it, it owns no device, no move touching it is in
flight, and every move off it is cleaned up: moves whose grace period has
passed are cleaned up right here, because once retired the shard has no
connection and the background cleanup could never reach it again.
"""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connections
from django.db.models import Q
from django.utils import timezone

from core.models import MoveJob, Placement, Shard
from routers.registry import ensure_shard_connection, refresh_registry
from shards.fence import count_held_devices
from shards.moves.cleanup import clean_up_move
from shards.rebalance.runner import RebalanceError


def drain_kind(alias: str) -> str:
    return f"drain:{alias}"


def get_shard(alias: str) -> Shard:
    shard = Shard.objects.filter(alias=alias).first()
    if shard is None:
        known = ", ".join(Shard.objects.values_list("alias", flat=True)) or "none"
        raise RebalanceError(f"there is no shard {alias!r} (registered: {known})")
    return shard


def pinned_on(alias: str) -> list[tuple[int, str]]:
    """(id, serial) of the pinned devices placed on the shard: they block a plain drain."""
    return list(
        Placement.objects.filter(shard_id=alias, pinned=True)
        .order_by("device_id")
        .values_list("device_id", "device__serial")
    )


def mark_draining(alias: str) -> Shard:
    """Stop new devices and moves in; idempotent for a shard already draining."""
    shard = get_shard(alias)
    if shard.state == Shard.State.RETIRED:
        raise RebalanceError(f"{alias} is retired already")
    if shard.state == Shard.State.ACTIVE:
        Shard.objects.filter(alias=alias, state=Shard.State.ACTIVE).update(
            state=Shard.State.DRAINING, updated_at=timezone.now()
        )
        refresh_registry(force=True)
        shard.refresh_from_db()
    return shard


@dataclass
class RetireStatus:
    """Whether the shard could be retired, and if not, what it waits for."""

    alias: str
    state: str
    devices_left: list[tuple[int, str]] = field(default_factory=list)
    owned_on_shard: int = 0
    moves_in_flight: list[int] = field(default_factory=list)
    cleanup_failed: dict[int, str] = field(default_factory=dict)
    cleanup_waiting: list[int] = field(default_factory=list)
    wait_until: datetime | None = None

    @property
    def retired(self) -> bool:
        return self.state == Shard.State.RETIRED

    @property
    def only_waiting(self) -> bool:
        """Nothing is wrong: it retires once the old rows' grace period has passed."""
        blocked = (
            self.devices_left or self.owned_on_shard or self.moves_in_flight or self.cleanup_failed
        )
        return not self.retired and not blocked and self.wait_until is not None

    def message(self) -> str:
        if self.retired:
            return f"{self.alias} is retired: it holds no device and is never used again"
        reasons = []
        if self.devices_left:
            listed = ", ".join(serial or str(pk) for pk, serial in self.devices_left[:10])
            more = (
                "" if len(self.devices_left) <= 10 else f" and {len(self.devices_left) - 10} more"
            )
            reasons.append(
                f"{len(self.devices_left)} devices are still placed on it ({listed}{more})"
            )
        if self.owned_on_shard and not self.devices_left:
            reasons.append(f"it still owns {self.owned_on_shard} devices by its fence rows")
        if self.moves_in_flight:
            jobs = ", ".join(map(str, self.moves_in_flight))
            reasons.append(f"move jobs {jobs} are in flight (`move_device --resume` if stuck)")
        for job, error in self.cleanup_failed.items():
            reasons.append(f"cleaning up move {job} failed: {error}")
        if self.wait_until is not None:
            reasons.append(
                f"the old rows of {len(self.cleanup_waiting)} moved devices are removed after"
                f" {timezone.localtime(self.wait_until):%Y-%m-%d %H:%M:%S %Z}"
            )
        again = (
            f"run `drain_shard {self.alias}` again after that (or with --wait)"
            if self.only_waiting
            else f"run `drain_shard {self.alias}` again to continue"
        )
        return f"{self.alias} is {self.state}, not retired yet: {'; '.join(reasons)}; {again}"

    def as_json(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "state": self.state,
            "retired": self.retired,
            "devices_left": [{"device": pk, "serial": serial} for pk, serial in self.devices_left],
            "owned_on_shard": self.owned_on_shard,
            "moves_in_flight": self.moves_in_flight,
            "cleanup_failed": {str(job): error for job, error in self.cleanup_failed.items()},
            "cleanup_waiting": self.cleanup_waiting,
            "wait_until": self.wait_until.isoformat() if self.wait_until else None,
            "message": self.message(),
        }


def _owned_on_shard(alias: str) -> int:
    ensure_shard_connection(alias)
    with connections[alias].cursor() as cursor:
        return count_held_devices(cursor)


def try_retire(alias: str) -> RetireStatus:
    """Retire a draining shard if it is empty and cleaned up; otherwise say what is left."""
    shard = get_shard(alias)
    status = RetireStatus(alias=alias, state=shard.state)
    if shard.state != Shard.State.DRAINING:
        return status
    status.devices_left = list(
        Placement.objects.filter(shard_id=alias)
        .order_by("device_id")
        .values_list("device_id", "device__serial")
    )
    status.owned_on_shard = _owned_on_shard(alias)
    touching = Q(source_id=alias) | Q(target_id=alias)
    status.moves_in_flight = list(
        MoveJob.objects.filter(touching, phase__in=MoveJob.IN_FLIGHT)
        .order_by("id")
        .values_list("pk", flat=True)
    )
    now = timezone.now()
    for job in MoveJob.objects.filter(source_id=alias, phase=MoveJob.Phase.RELEASED).order_by("id"):
        if job.cleanup_after is not None and job.cleanup_after > now:
            status.cleanup_waiting.append(job.pk)
            status.wait_until = max(status.wait_until or job.cleanup_after, job.cleanup_after)
            continue
        try:
            clean_up_move(job)
        except Exception as exc:  # the shard or the directory failed: say so, retry next time
            status.cleanup_failed[job.pk] = str(exc).strip() or type(exc).__name__
    blocked = status.devices_left or status.owned_on_shard or status.moves_in_flight
    if blocked or status.cleanup_failed or status.cleanup_waiting:
        return status
    Shard.objects.filter(alias=alias, state=Shard.State.DRAINING).update(
        state=Shard.State.RETIRED, updated_at=timezone.now()
    )
    refresh_registry(force=True)
    status.state = Shard.State.RETIRED
    return status
