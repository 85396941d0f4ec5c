"""Command expiry: queued or sent commands past their expiry become expired.

deliver_pending() already expires a device's commands when the device reports;
this catches the devices that stay silent, so users see the real state.
"""

from datetime import datetime

from django.db import transaction
from django.utils import timezone

from shards.fence import lock_owned_devices
from shards.models import Command

# Acknowledged commands are being worked on by the device: only it may finish them.
EXPIRING = (Command.Status.QUEUED, Command.Status.SENT)


def expire_commands(alias: str, now: datetime | None = None) -> int:
    """Expire overdue commands of the devices this shard owns, in one UPDATE; how many."""
    now = now or timezone.now()
    with transaction.atomic(using=alias):
        owned = lock_owned_devices(alias)
        if not owned:
            return 0
        return (
            Command.objects.on_shard(alias)
            .filter(device_id__in=owned, status__in=EXPIRING, expires_at__lte=now)
            .update(status=Command.Status.EXPIRED, completed_at=now)
        )
