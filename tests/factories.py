"""Small helpers to make directory and shard rows in tests."""

import itertools
from datetime import UTC, datetime, timedelta

from core.devices import NewDevice, create_device
from core.models import User

_serials = itertools.count(1)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def make_device(**kwargs) -> NewDevice:
    return create_device(f"test-{next(_serials):05d}", **kwargs)


def make_user(username: str, *permissions: str, **fields) -> User:
    """A user (password "pw-<username>") holding these permissions ("core.view_device", ...)."""
    from django.contrib.auth.models import Permission

    user = User.objects.create_user(username, password=f"pw-{username}", **fields)
    for name in permissions:
        app_label, codename = name.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return User.objects.get(pk=user.pk)  # a fresh instance: no stale permission cache


def reading_times(n: int, start: datetime = T0) -> list[datetime]:
    return [start + timedelta(seconds=i) for i in range(n)]


def mark_for_rollup(device_id: int) -> None:
    """Mark every minute the device has readings in, as the import does for what it stores.

    For tests that write readings directly and then read what depends on rollups.
    """
    from django.db import connections

    from routers.placement import shard_for_device
    from shards.analysis.buckets import BUCKET_ORIGIN

    with connections[shard_for_device(device_id)].cursor() as cursor:
        cursor.execute(
            "INSERT INTO shards_rolluppending (device_id, metric, minute, marked_at)"
            " SELECT DISTINCT device_id, metric, date_bin('1 minute', ts, %s), now()"
            " FROM shards_reading WHERE device_id = %s ON CONFLICT DO NOTHING",
            [BUCKET_ORIGIN, device_id],
        )
