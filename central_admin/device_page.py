"""What the device page shows besides the form: placement, moves, credentials, shard rows.

The shard rows (commands, alerts, uploads, overview) are read from the shard the
directory places the device on; a shard that does not answer is reported on the
page, never as a 500.
"""

from datetime import timedelta
from typing import Any

from django.db import DatabaseError
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from core.models import Device, MoveJob, Placement, Shard
from routers.errors import RoutingError
from routers.registry import ensure_shard_connection
from shards.models import Alert, Command, Upload
from shards.moves.report import rows_moved
from shards.overview import device_overviews

RECENT = 25
# The move panel's script stops polling at these; `released` has switched already.
UI_FINAL_PHASES = (*MoveJob.FINAL, MoveJob.Phase.RELEASED)
# A finished move stays on the page this long, so its outcome is seen.
SHOW_FINISHED_MOVE = timedelta(minutes=10)
OPEN_COMMANDS = (Command.Status.QUEUED, Command.Status.SENT, Command.Status.ACKNOWLEDGED)


def chart_url(device: Device) -> str | None:
    """The portal's chart of recent readings, if the portal is installed."""
    try:
        return reverse("portal:chart", kwargs={"device_id": device.pk}) + "?range=24h"
    except NoReverseMatch:
        return None


def shard_rows(alias: str, device_id: int) -> dict[str, Any]:
    """The device's recent rows on the shard that serves it: a few small indexed queries."""
    ensure_shard_connection(alias)
    overviews, _ = device_overviews({device_id: alias})
    return {
        "overview": overviews[device_id],
        "commands": list(Command.objects.for_device(device_id).order_by("-id")[:RECENT]),
        "alerts": list(Alert.objects.for_device(device_id).order_by("-id")[:RECENT]),
        "uploads": list(
            Upload.objects.for_device(device_id).defer("payload").order_by("-id")[:RECENT]
        ),
    }


def move_targets(placement: Placement | None) -> list[str]:
    """Active shards other than the device's own: where it may move."""
    shards = Shard.objects.filter(state=Shard.State.ACTIVE).order_by("alias")
    if placement is not None:
        shards = shards.exclude(alias=placement.shard_id)
    return list(shards.values_list("alias", flat=True))


def current_move(moves: list[MoveJob]) -> MoveJob | None:
    """The latest move if it is running or finished a short while ago."""
    if not moves:
        return None
    latest = moves[0]
    if (
        latest.phase in MoveJob.IN_FLIGHT
        or latest.updated_at >= timezone.now() - SHOW_FINISHED_MOVE
    ):
        return latest
    return None


def device_context(device: Device) -> dict[str, Any]:
    placement = Placement.objects.filter(device=device).select_related("shard").first()
    moves = list(MoveJob.objects.filter(device=device).order_by("-id")[:20])
    for job in moves:
        job.rows_total = rows_moved(job)
    context: dict[str, Any] = {
        "placement": placement,
        "moves": moves,
        "current_move": current_move(moves),
        "ui_final_phases": UI_FINAL_PHASES,
        "move_targets": move_targets(placement),
        "credentials": list(device.credentials.order_by("-id")),
        "chart_url": chart_url(device),
        "open_commands": OPEN_COMMANDS,
        "recent": RECENT,
        "shard_error": "",
    }
    if placement is None:
        context["shard_error"] = "the device has no placement"
        return context
    try:
        context.update(shard_rows(placement.shard_id, device.pk))
    except (DatabaseError, RoutingError) as exc:
        context["shard_error"] = f"{placement.shard_id} unreachable: {exc}".strip()
    return context
