"""Querysets for shard models: every query names its device or its shard."""

from typing import Self

from django.db import models
from django.db.models import Q

from routers.placement import device_id_of, shard_for_device
from routers.registry import ensure_shard_connection


class ShardQuerySet(models.QuerySet):
    """`for_device()` for one device's rows; `on_shard()` for shard-wide jobs."""

    def for_device(self, device: object) -> Self:
        """This device's rows, on the shard that owns the device."""
        device_id = device_id_of(device)
        # One clone, not two (using() then filter()): this runs on every device read.
        queryset = self._chain()
        queryset._db = shard_for_device(device_id)
        queryset.query.add_q(Q(device_id=device_id))
        return queryset

    def on_shard(self, alias: str) -> Self:
        """All rows of one shard, e.g. for analysis, sweeping or cluster totals."""
        ensure_shard_connection(alias)
        return self.using(alias)


ShardManager = models.Manager.from_queryset(ShardQuerySet)
