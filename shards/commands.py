"""The command lifecycle on a device's shard.

queued -> sent (delivered to the device; re-sent if not acknowledged within
COMMAND_REDELIVER_AFTER) -> acknowledged -> succeeded | failed; or expired
(past expires_at) or cancelled (by a user) before it finished.
"""

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from routers.errors import FanOutError
from routers.fanout import fan_out
from shards.fence import write_for_device
from shards.models import Command
from shards.sql import literal_list

S = Command.Status
OPEN = (S.QUEUED, S.SENT, S.ACKNOWLEDGED)
# Whether a device (the one parameter) has commands still open, for a statement that is on
# the device's shard anyway to carry (the upload's, shards.ingest): most uploads then need
# no second statement to learn there is nothing to deliver.
HAS_OPEN_SQL = (
    f"EXISTS (SELECT 1 FROM {Command._meta.db_table} WHERE device_id = %s"
    f" AND status IN ({literal_list(OPEN)}))"
)
FINAL = (S.SUCCEEDED, S.FAILED, S.EXPIRED, S.CANCELLED)
REPORTABLE = (S.ACKNOWLEDGED, S.SUCCEEDED, S.FAILED)


NO_SUCH_COMMAND = "no such command"


class CommandError(Exception):
    """A command operation refused; `status` is the HTTP status that fits."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


def create_command(
    device_id: int,
    name: str,
    args: dict[str, Any] | None = None,
    *,
    expires_in: int | None = None,
    created_by_id: int | None = None,
) -> Command:
    expires_in = settings.COMMAND_DEFAULT_EXPIRY if expires_in is None else expires_in
    expires_at = timezone.now() + timedelta(seconds=expires_in)
    return write_for_device(
        device_id,
        lambda alias: Command.objects.on_shard(alias).create(
            device_id=device_id,
            name=name,
            args=args or {},
            expires_at=expires_at,
            created_by_id=created_by_id,
        ),
    )


def deliver_pending(device_id: int, *, any_open: bool | None = None) -> list[Command]:
    """Commands the device should act on now, marked sent; each delivery counts an attempt.

    Open commands found past their expiry on the way are marked expired. `any_open`:
    whether the device has open commands, when the caller read it already through the
    fence (HAS_OPEN_SQL); None asks.
    """
    now = timezone.now()
    due = Q(status=S.QUEUED) | Q(
        status=S.SENT, sent_at__lte=now - timedelta(seconds=settings.COMMAND_REDELIVER_AFTER)
    )

    def deliver(alias: str) -> list[Command]:
        Command.objects.on_shard(alias).filter(
            device_id=device_id, status__in=OPEN, expires_at__lte=now
        ).update(status=S.EXPIRED, completed_at=now)
        commands = list(
            Command.objects.on_shard(alias)
            .select_for_update(skip_locked=True)
            .filter(due, device_id=device_id)
            .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
            .order_by("id")[: settings.COMMAND_DELIVERY_BATCH]
        )
        for command in commands:
            command.status = S.SENT
            command.sent_at = now
            command.attempts += 1
        Command.objects.on_shard(alias).bulk_update(commands, ["status", "sent_at", "attempts"])
        return commands

    # Most reports find nothing to deliver. Ask first with a read, which checks the fence
    # in the same statement but takes no lock: taking it FOR SHARE writes a row lock,
    # which makes the transaction's commit wait for the disk.
    if any_open is None:
        any_open = Command.objects.for_device(device_id).filter(status__in=OPEN).exists()
    if not any_open:
        return []
    return write_for_device(device_id, deliver)


def device_of_command(command_id: int) -> int:
    """The device a command belongs to, asked of every shard (its id does not say which
    shard holds it now); CommandError 404 if none has it, FanOutError if a shard that
    could have it did not answer."""
    answers = fan_out(
        lambda alias: (
            Command.objects.on_shard(alias)
            .filter(pk=command_id)
            .values_list("device_id", flat=True)
            .first()
        ),
        return_exceptions=True,
    )
    failed = {alias: a for alias, a in answers.items() if isinstance(a, BaseException)}
    found = [a for a in answers.values() if a is not None and not isinstance(a, BaseException)]
    if found:
        return found[0]
    if failed:
        raise FanOutError(failed)
    raise CommandError(NO_SUCH_COMMAND, status=404)


def _open_command_for_update(alias: str, device_id: int, command_id: int) -> Command:
    """The device's command, locked; refused if unknown (404) or already finished (409)."""
    command = (
        Command.objects.on_shard(alias)
        .select_for_update()
        .filter(pk=command_id, device_id=device_id)
        .first()
    )
    if command is None:
        raise CommandError(f"no command {command_id} for this device", status=404)
    if command.status in FINAL:
        raise CommandError(f"command {command_id} is already {command.status}")
    return command


def report_result(device_id: int, command_id: int, status: str, result: Any = None) -> Command:
    """The device says how a command went; a finished command cannot change again."""
    if status not in REPORTABLE:
        raise CommandError(f"status must be one of {', '.join(REPORTABLE)}", status=400)

    def report(alias: str) -> Command:
        command = _open_command_for_update(alias, device_id, command_id)
        command.status = status
        if status != S.ACKNOWLEDGED:
            command.completed_at = timezone.now()
            command.result = result
        command.save(update_fields=["status", "completed_at", "result"])
        return command

    return write_for_device(device_id, report)


def cancel_command(device_id: int, command_id: int) -> Command:
    def cancel(alias: str) -> Command:
        command = _open_command_for_update(alias, device_id, command_id)
        command.status = S.CANCELLED
        command.completed_at = timezone.now()
        command.save(update_fields=["status", "completed_at"])
        return command

    return write_for_device(device_id, cancel)
