"""What lists of devices show: last seen, online, latest values and open alerts.

Asked of each shard in parallel, one query per shard however many devices are
listed, so a page of devices costs the same whether they sit on one shard or many.
The same query reads each device's fence: a device the shard no longer serves (a
cached placement gone stale after a move) is looked up again and asked of its new
shard in a further round; one held by a move's fence is asked again a moment later.
"""

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connections
from django.utils import timezone

from routers.fanout import fan_out
from routers.placement import invalidate_placement, shard_for_device
from shards.fence import FENCE_TABLE, HELD_DEVICES_SQL, DeviceMoved, follow_device, served
from shards.models import Alert, DeviceFence, DeviceStatus, LatestValue

# Rounds of asking again for devices whose fence sent us elsewhere or made us wait.
OVERVIEW_ROUNDS = 4
FENCED_PAUSE = 0.05


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


# One round trip: the device ids as an array, joined to their fence, status, latest values
# and alerts, all in the one snapshot of the statement.
OVERVIEW_SQL = f"""
SELECT ids.device_id,
       fence.state,
       status.last_seen_at,
       (SELECT coalesce(jsonb_object_agg(lv.metric, jsonb_build_object('value', lv.value,
                                                                       'ts', lv.ts)), '{{}}')
          FROM {LatestValue._meta.db_table} lv WHERE lv.device_id = ids.device_id),
       (SELECT count(*) FROM {Alert._meta.db_table} a
         WHERE a.device_id = ids.device_id AND a.state <> 'cleared')
  FROM unnest(%s::bigint[]) AS ids(device_id)
  LEFT JOIN {FENCE_TABLE} fence ON fence.device_id = ids.device_id
  LEFT JOIN {DeviceStatus._meta.db_table} status ON status.device_id = ids.device_id
"""


def _overviews_on_shard(alias: str, device_ids: list[int]) -> dict[int, DeviceOverview | str]:
    """Overviews of the devices this shard serves; the fence state of the others."""
    with connections[alias].cursor() as cursor:
        cursor.execute(OVERVIEW_SQL, [device_ids])
        rows = cursor.fetchall()
    overviews: dict[int, DeviceOverview | str] = {}
    for device_id, state, last_seen_at, latest_json, open_alerts in rows:
        if not served(state):
            overviews[device_id] = state or "none"
            continue
        # Django's backend hands jsonb over as text, for its own fields to decode.
        latest = json.loads(latest_json)
        for reading in latest.values():
            reading["ts"] = datetime.fromisoformat(reading["ts"])
        overviews[device_id] = DeviceOverview(
            device_id, alias, True, last_seen_at, latest, open_alerts
        )
    return overviews


def _one_round(
    placement: dict[int, str], overviews: dict[int, DeviceOverview], unavailable: set[str]
) -> dict[int, str]:
    """Ask each shard for its devices; the devices to ask again, with their fence state."""
    by_shard: dict[str, list[int]] = {}
    for device_id, alias in placement.items():
        by_shard.setdefault(alias, []).append(device_id)
    answers = fan_out(
        lambda alias: _overviews_on_shard(alias, by_shard[alias]),
        by_shard,
        return_exceptions=True,
    )
    again: dict[int, str] = {}
    for alias, answer in answers.items():
        if isinstance(answer, BaseException):
            unavailable.add(alias)
            for device_id in by_shard[alias]:
                overviews[device_id] = DeviceOverview(device_id, alias, reachable=False)
            continue
        for device_id in by_shard[alias]:
            found = answer.get(device_id, "none")
            if isinstance(found, DeviceOverview):
                overviews[device_id] = found
            else:
                again[device_id] = found
    return again


def device_overviews(placement: dict[int, str]) -> tuple[dict[int, DeviceOverview], list[str]]:
    """Overviews of the devices in {device_id: shard alias}, and the shards that did not answer.

    Each overview comes from the shard that serves the device: `placement` (the
    directory's or a cache's word) is followed where the fences say it is stale. A
    device on an unreachable shard, or still not served after the rounds, is listed
    with reachable=False.
    """
    overviews: dict[int, DeviceOverview] = {}
    unavailable: set[str] = set()
    for _ in range(OVERVIEW_ROUNDS):
        again = _one_round(placement, overviews, unavailable)
        if not again:
            break
        if any(state == DeviceFence.State.FENCED for state in again.values()):
            time.sleep(FENCED_PAUSE)  # a move's fenced window is short
        placement = {}
        for device_id, state in again.items():
            if state != DeviceFence.State.FENCED:
                invalidate_placement(device_id)
            placement[device_id] = shard_for_device(device_id)
    for device_id, alias in placement.items():
        overviews.setdefault(device_id, DeviceOverview(device_id, alias, reachable=False))
    return overviews, sorted(unavailable)


def online_device_ids(aliases: list[str] | None = None) -> set[int]:
    """Devices seen within DEVICE_OFFLINE_AFTER on the shard that holds them (one query each).

    A moved device's old status row, left until cleanup, does not count.
    """
    cutoff = offline_cutoff()
    answers = fan_out(
        lambda alias: set(
            DeviceStatus.objects.on_shard(alias)
            .filter(last_seen_at__gte=cutoff)
            .extra(where=[f"device_id IN ({HELD_DEVICES_SQL})"])
            .values_list("device_id", flat=True)
        ),
        aliases,
    )
    return set().union(*answers.values()) if answers else set()


def device_overview(device_id: int) -> DeviceOverview:
    """One device's overview, from the shard that serves it (a read like any other:
    it follows a move, waits out a fenced window, and raises if the shard is down)."""

    def attempt(alias: str) -> DeviceOverview:
        found = _overviews_on_shard(alias, [device_id]).get(device_id, "none")
        if not isinstance(found, DeviceOverview):
            raise DeviceMoved(device_id, alias, None if found == "none" else found)
        return found

    return follow_device(device_id, attempt)
