"""What lists of devices show: last seen, online, latest values and open alerts.

Asked of each shard in parallel, one query per shard however many devices are
listed, so a page of devices costs the same whether they sit on one shard or many.
"""

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connections
from django.utils import timezone

from routers.fanout import fan_out
from routers.placement import shard_for_device
from shards.models import Alert, DeviceStatus, LatestValue


@dataclass
class DeviceOverview:
    device_id: int
    shard: str
    reachable: bool = True
    last_seen_at: datetime | None = None
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    open_alerts: int = 0

    @property
    def online(self) -> bool | None:
        """None when the shard could not be asked."""
        if not self.reachable:
            return None
        return self.last_seen_at is not None and self.last_seen_at >= offline_cutoff()


def offline_cutoff() -> datetime:
    return timezone.now() - timedelta(seconds=settings.DEVICE_OFFLINE_AFTER)


# One round trip: the device ids as an array, joined to status, latest values and alerts.
OVERVIEW_SQL = f"""
SELECT ids.device_id,
       status.last_seen_at,
       (SELECT coalesce(jsonb_object_agg(lv.metric, jsonb_build_object('value', lv.value,
                                                                       'ts', lv.ts)), '{{}}')
          FROM {LatestValue._meta.db_table} lv WHERE lv.device_id = ids.device_id),
       (SELECT count(*) FROM {Alert._meta.db_table} a
         WHERE a.device_id = ids.device_id AND a.state <> 'cleared')
  FROM unnest(%s::bigint[]) AS ids(device_id)
  LEFT JOIN {DeviceStatus._meta.db_table} status ON status.device_id = ids.device_id
"""


def _overviews_on_shard(alias: str, device_ids: list[int]) -> dict[int, DeviceOverview]:
    with connections[alias].cursor() as cursor:
        cursor.execute(OVERVIEW_SQL, [device_ids])
        rows = cursor.fetchall()
    overviews = {}
    for device_id, last_seen_at, latest_json, open_alerts in rows:
        # Django's backend hands jsonb over as text, for its own fields to decode.
        latest = json.loads(latest_json)
        for reading in latest.values():
            reading["ts"] = datetime.fromisoformat(reading["ts"])
        overviews[device_id] = DeviceOverview(
            device_id, alias, True, last_seen_at, latest, open_alerts
        )
    return overviews


def device_overviews(placement: dict[int, str]) -> tuple[dict[int, DeviceOverview], list[str]]:
    """Overviews of the devices in {device_id: shard alias}, and the shards that did not answer.

    A device on an unreachable shard is still listed, with reachable=False.
    """
    by_shard: dict[str, list[int]] = {}
    for device_id, alias in placement.items():
        by_shard.setdefault(alias, []).append(device_id)
    answers = fan_out(
        lambda alias: _overviews_on_shard(alias, by_shard[alias]),
        by_shard,
        return_exceptions=True,
    )
    overviews: dict[int, DeviceOverview] = {}
    unavailable = []
    for alias, answer in answers.items():
        if isinstance(answer, BaseException):
            unavailable.append(alias)
            answer = {}
        for device_id in by_shard[alias]:
            overviews[device_id] = answer.get(device_id) or DeviceOverview(
                device_id, alias, reachable=not isinstance(answers[alias], BaseException)
            )
    return overviews, sorted(unavailable)


def online_device_ids(aliases: list[str] | None = None) -> set[int]:
    """Devices seen within DEVICE_OFFLINE_AFTER on any shard that owns them (one query each)."""
    cutoff = offline_cutoff()
    answers = fan_out(
        lambda alias: set(
            DeviceStatus.objects.on_shard(alias)
            .filter(last_seen_at__gte=cutoff)
            .values_list("device_id", flat=True)
        ),
        aliases,
    )
    return set().union(*answers.values()) if answers else set()


def device_overview(device_id: int) -> DeviceOverview:
    """One device's overview, on its current shard."""
    alias = shard_for_device(device_id)
    return _overviews_on_shard(alias, [device_id])[device_id]
