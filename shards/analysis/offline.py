"""Offline detection: a device silent for longer than its report interval gets an alert.

The 'offline' alert is the mark: it opens once (raise_alert keeps one unresolved
alert per condition) and is cleared by the first run after the device reports
again. A device that never reported counts as silent since it was created.
"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from core.models import Device
from shards.alerts import UNRESOLVED, clear_alert, raise_alert
from shards.fence import lock_owned_devices
from shards.models import Alert, DeviceStatus

OFFLINE = "offline"


@dataclass
class OfflineScan:
    """What one shard's scan found: devices to alert and devices to clear."""

    silent: dict[int, datetime | None] = field(default_factory=dict)
    back: list[int] = field(default_factory=list)
    checked: int = 0


def scan(alias: str, now: datetime) -> OfflineScan:
    """Which owned devices went silent or came back; read under their fences."""
    with transaction.atomic(using=alias):
        owned = lock_owned_devices(alias)
        if not owned:
            return OfflineScan()
        seen = dict(
            DeviceStatus.objects.on_shard(alias)
            .filter(device_id__in=owned)
            .values_list("device_id", "last_seen_at")
        )
        flagged = set(
            Alert.objects.on_shard(alias)
            .filter(device_id__in=owned, condition=OFFLINE, state__in=UNRESOLVED)
            .values_list("device_id", flat=True)
        )
    # One directory query: intervals (and creation, for devices never seen) of all of them.
    devices = Device.objects.filter(pk__in=owned).only(
        "pk", "report_interval_s", "created_at", "is_active"
    )
    result = OfflineScan(checked=len(owned))
    for device in devices:
        last_seen = seen.get(device.pk)
        silent_since = last_seen or device.created_at
        # A deactivated device is not expected to report: never offline.
        overdue = device.is_active and (
            now - silent_since > timedelta(seconds=device.expected_report_interval)
        )
        if overdue and device.pk not in flagged:
            result.silent[device.pk] = last_seen
        elif not overdue and device.pk in flagged:
            result.back.append(device.pk)
    return result


def detect_offline(alias: str, now: datetime | None = None) -> dict[str, int]:
    """Raise 'offline' for newly silent devices of the shard, clear it for those back.

    The alerts are written through each device's fence (shards.alerts), so one
    that moved since the scan gets its alert on its new shard.
    """
    now = now or timezone.now()
    found = scan(alias, now)
    opened = 0
    for device_id, last_seen in found.silent.items():
        since = f"since {last_seen:%Y-%m-%d %H:%M:%S} UTC" if last_seen else "since it was added"
        _, created = raise_alert(
            device_id, OFFLINE, f"no report {since}", severity=Alert.Severity.WARNING
        )
        opened += created
    cleared = sum(clear_alert(device_id, OFFLINE) for device_id in found.back)
    return {"checked": found.checked, "opened": opened, "cleared": cleared}
