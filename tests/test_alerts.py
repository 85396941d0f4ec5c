"""The alert lifecycle on a real shard: one unresolved alert per condition, ack, clear, history."""

import threading

import pytest
from django.db import connections

from shards.alerts import AlertNotFound, acknowledge_alert, clear_alert, raise_alert
from shards.models import Alert
from tests.factories import make_device

State = Alert.State


def alerts_of(device_id: int) -> list[tuple[str, str]]:
    return list(
        Alert.objects.for_device(device_id).order_by("opened_at").values_list("condition", "state")
    )


def test_a_persisting_condition_opens_one_alert(shards):
    device = make_device(shard="shard_2").device
    first, opened = raise_alert(device.pk, "max:temp", "too hot", metric="temp", value=91.0)
    again, opened_again = raise_alert(device.pk, "max:temp", "still too hot", value=95.0)

    assert (opened, opened_again) == (True, False)
    assert again.pk == first.pk
    assert alerts_of(device.pk) == [("max:temp", State.OPEN)]
    # Another condition is another alert.
    raise_alert(device.pk, "offline", "silent")
    assert len(alerts_of(device.pk)) == 2


def test_acknowledged_alerts_stay_unresolved_until_cleared(shards):
    device = make_device(shard="shard_1").device
    alert, _ = raise_alert(device.pk, "offline", "silent")

    acknowledged = acknowledge_alert(device.pk, alert.pk, user_id=7)
    assert (acknowledged.state, acknowledged.acknowledged_by_id) == (State.ACKNOWLEDGED, 7)
    assert acknowledged.acknowledged_at is not None
    # Still unresolved: raising it again does not open a second one.
    assert raise_alert(device.pk, "offline", "silent")[1] is False

    assert clear_alert(device.pk, "offline") == 1
    assert clear_alert(device.pk, "offline") == 0
    # Once cleared, the condition coming back is a new alert; the old one is history.
    reopened, opened = raise_alert(device.pk, "offline", "silent again")
    assert opened and reopened.pk != alert.pk
    assert alerts_of(device.pk) == [("offline", State.CLEARED), ("offline", State.OPEN)]


def test_acknowledging_someone_elses_alert_is_refused(shards):
    mine = make_device(shard="shard_1").device
    theirs = make_device(shard="shard_1").device
    alert, _ = raise_alert(theirs.pk, "offline", "silent")

    with pytest.raises(AlertNotFound):
        acknowledge_alert(mine.pk, alert.pk, user_id=None)
    assert Alert.objects.for_device(theirs).get(pk=alert.pk).state == State.OPEN


def test_concurrent_raises_open_one_alert(shards):
    device = make_device(shard="shard_2").device
    barrier = threading.Barrier(6)
    opened: list[bool] = []

    def racer() -> None:
        try:
            barrier.wait()
            opened.append(raise_alert(device.pk, "zscore:temp", "far from the mean")[1])
        finally:
            connections.close_all()

    threads = [threading.Thread(target=racer) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(opened) == [False] * 5 + [True]
    assert alerts_of(device.pk) == [("zscore:temp", State.OPEN)]
