"""The alert lifecycle on a device's shard: open -> acknowledged -> cleared.

One unresolved (open or acknowledged) alert per device and condition, enforced by
a partial unique index, so a condition that persists never floods the list.
Every write goes through the device's fence, so a move never loses one.
"""

from django.db import IntegrityError, transaction
from django.utils import timezone

from shards.fence import write_for_device
from shards.models import Alert

UNRESOLVED = (Alert.State.OPEN, Alert.State.ACKNOWLEDGED)


class AlertNotFound(Exception):
    """No such alert on the device (or it belongs to another device)."""


def raise_alert(
    device_id: int,
    condition: str,
    message: str,
    *,
    severity: str = Alert.Severity.WARNING,
    metric: str = "",
    value: float | None = None,
) -> tuple[Alert, bool]:
    """Open an alert unless one for this condition is unresolved; returns (alert, opened)."""

    def write(alias: str) -> tuple[Alert, bool]:
        alerts = Alert.objects.on_shard(alias)
        existing = alerts.filter(device_id=device_id, condition=condition, state__in=UNRESOLVED)
        found = existing.first()
        if found is not None:
            return found, False
        try:
            with transaction.atomic(using=alias):
                created = alerts.create(
                    device_id=device_id,
                    condition=condition,
                    message=message,
                    severity=severity,
                    metric=metric,
                    value=value,
                )
        except IntegrityError:
            # A concurrent writer opened it first: theirs is the one.
            return existing.get(), False
        return created, True

    return write_for_device(device_id, write)


def acknowledge_alert(device_id: int, alert_id: int, user_id: int | None) -> Alert:
    """Mark an open alert acknowledged (idempotent for one already acknowledged or cleared)."""

    def write(alias: str) -> Alert:
        alert = (
            Alert.objects.on_shard(alias)
            .select_for_update()
            .filter(device_id=device_id, pk=alert_id)
            .first()
        )
        if alert is None:
            raise AlertNotFound(f"device {device_id} has no alert {alert_id}")
        if alert.state == Alert.State.OPEN:
            alert.state = Alert.State.ACKNOWLEDGED
            alert.acknowledged_at = timezone.now()
            alert.acknowledged_by_id = user_id
            alert.save(
                using=alias, update_fields=["state", "acknowledged_at", "acknowledged_by_id"]
            )
        return alert

    return write_for_device(device_id, write)


def clear_alert(device_id: int, condition: str) -> int:
    """The condition ended: clear its unresolved alert; returns how many were cleared (0 or 1)."""
    return write_for_device(
        device_id,
        lambda alias: (
            Alert.objects.on_shard(alias)
            .filter(device_id=device_id, condition=condition, state__in=UNRESOLVED)
            .update(state=Alert.State.CLEARED, cleared_at=timezone.now())
        ),
    )
