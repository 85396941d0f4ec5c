"""What the device page and its live refresh show, read from the device's shard."""

from datetime import datetime

from django.db.models import Max

from core.models import Device
from shards.models import Alert, Command, LatestValue

RECENT_COMMANDS = 20
RECENT_ALERTS = 20


def recent_commands(device: Device) -> list[Command]:
    return list(Command.objects.for_device(device).order_by("-id")[:RECENT_COMMANDS])


def recent_alerts(device: Device) -> list[Alert]:
    """Unresolved alerts first (they need someone), then the latest history."""
    return sorted(
        Alert.objects.for_device(device).order_by("-opened_at")[:RECENT_ALERTS],
        key=lambda alert: alert.state == Alert.State.CLEARED,
    )


def newest_reading_ts(device: Device) -> datetime | None:
    """The newest reading's time, from the small latest-values table (no readings scan)."""
    return LatestValue.objects.for_device(device).aggregate(newest=Max("ts"))["newest"]
