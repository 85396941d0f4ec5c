"""Per-shard analysis on real shards: offline alerts, command expiry, retention, moves.

Runs call shards.analysis.run.analyse_shard in this process (as `manage.py analyse`
does); the Celery path is in test_analysis_tasks. Every check reads the rows of
each shard by alias, so it sees where they really are.
"""

import json
from datetime import datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from core.models import Device
from shards.analysis.run import analyse_shard
from shards.commands import create_command
from shards.ingest import import_upload_now, stage_upload
from shards.models import Alert, Command, DeviceFence, DeviceStatus, LatestValue, Reading, Upload
from shards.moves.protocol import move_device
from tests.factories import make_device

S = Command.Status


def analyse(alias: str) -> dict[str, Any]:
    summary = analyse_shard(alias)
    assert "errors" not in summary and "skipped" not in summary, summary
    return summary


def silent_device(alias: str, *, minutes: float, interval_s: int | None = 60) -> Device:
    """A device on `alias` last seen `minutes` ago, expected every `interval_s` seconds."""
    device = make_device(shard=alias).device
    Device.objects.filter(pk=device.pk).update(report_interval_s=interval_s)
    seen = timezone.now() - timedelta(minutes=minutes)
    DeviceStatus.objects.on_shard(alias).create(device_id=device.pk, last_seen_at=seen)
    return device


def alerts_on(alias: str, device: Device) -> list[tuple[str, str]]:
    return list(
        Alert.objects.on_shard(alias)
        .filter(device_id=device.pk)
        .order_by("opened_at")
        .values_list("condition", "state")
    )


def set_fence(alias: str, device: Device, state: str) -> None:
    DeviceFence.objects.on_shard(alias).filter(device_id=device.pk).update(state=state)


def command_with(device: Device, status: str, expires_at: datetime) -> int:
    command = create_command(device.pk, f"do-{status}")
    Command.objects.for_device(device).filter(pk=command.pk).update(
        status=status, expires_at=expires_at
    )
    return command.pk


def statuses_on(alias: str, ids: list[int]) -> list[str]:
    found = dict(Command.objects.on_shard(alias).filter(pk__in=ids).values_list("pk", "status"))
    return [found.get(pk) for pk in ids]


# -- offline ------------------------------------------------------------------------


def test_a_silent_device_gets_one_offline_alert_cleared_when_it_reports(shards, settings):
    settings.DEVICE_REPORT_INTERVAL = 600
    silent = silent_device("shard_1", minutes=5)  # its own interval: 60 s
    default_silent = silent_device("shard_1", minutes=15, interval_s=None)
    default_fine = silent_device("shard_1", minutes=5, interval_s=None)  # within 600 s
    new = make_device(shard="shard_1").device  # never reported, just added

    summaries = [analyse("shard_1") for _ in range(3)]

    assert [s["offline"]["opened"] for s in summaries] == [2, 0, 0]
    assert alerts_on("shard_1", silent) == [("offline", Alert.State.OPEN)]
    assert alerts_on("shard_1", default_silent) == [("offline", Alert.State.OPEN)]
    assert alerts_on("shard_1", default_fine) == alerts_on("shard_1", new) == []

    staged = stage_upload(
        silent.pk, "back-1", [{"ts": timezone.now(), "metric": "t", "value": 1.0}]
    )
    assert import_upload_now(silent.pk, staged.upload.pk) == Upload.Status.IMPORTED
    summary = analyse("shard_1")

    assert summary["offline"]["cleared"] == 1
    assert alerts_on("shard_1", silent) == [("offline", Alert.State.CLEARED)]
    assert alerts_on("shard_1", default_silent) == [("offline", Alert.State.OPEN)]
    # Silent again later: a new alert, the cleared one stays as history.
    DeviceStatus.objects.on_shard("shard_1").filter(device_id=silent.pk).update(
        last_seen_at=timezone.now() - timedelta(minutes=2)
    )
    analyse("shard_1")
    assert alerts_on("shard_1", silent) == [
        ("offline", Alert.State.CLEARED),
        ("offline", Alert.State.OPEN),
    ]


def test_a_deactivated_device_is_not_offline(shards):
    device = silent_device("shard_2", minutes=10)
    Device.objects.filter(pk=device.pk).update(is_active=False)
    analyse("shard_2")
    assert alerts_on("shard_2", device) == []


# -- command expiry -----------------------------------------------------------------


def test_queued_and_sent_commands_past_expiry_expire_others_stay(shards):
    device = make_device(shard="shard_1").device
    elsewhere = make_device(shard="shard_2").device
    past = timezone.now() - timedelta(minutes=1)
    future = timezone.now() + timedelta(hours=1)
    ids = [
        command_with(device, S.QUEUED, past),
        command_with(device, S.SENT, past),
        command_with(device, S.QUEUED, future),
        command_with(device, S.SENT, future),
        command_with(device, S.ACKNOWLEDGED, past),
        command_with(device, S.SUCCEEDED, past),
        command_with(device, S.CANCELLED, past),
    ]
    other = command_with(elsewhere, S.QUEUED, past)

    assert analyse("shard_1")["expiry"]["expired"] == 2

    assert statuses_on("shard_1", ids) == [
        S.EXPIRED,
        S.EXPIRED,
        S.QUEUED,
        S.SENT,
        S.ACKNOWLEDGED,
        S.SUCCEEDED,
        S.CANCELLED,
    ]
    expired = Command.objects.on_shard("shard_1").get(pk=ids[0])
    assert expired.completed_at is not None
    assert statuses_on("shard_2", [other]) == [S.QUEUED]  # its own shard's run does it
    assert analyse("shard_2")["expiry"]["expired"] == 1
    assert statuses_on("shard_2", [other]) == [S.EXPIRED]


# -- retention ----------------------------------------------------------------------


def add_readings(alias: str, device: Device, ages_days: list[float]) -> None:
    now = timezone.now()
    Reading.objects.on_shard(alias).bulk_create(
        Reading(device_id=device.pk, metric="t", ts=now - timedelta(days=age), value=age)
        for age in ages_days
    )


def reading_ages(alias: str, device: Device) -> list[float]:
    rows = Reading.objects.on_shard(alias).filter(device_id=device.pk).order_by("-value")
    return list(rows.values_list("value", flat=True))


def test_retention_deletes_only_old_raw_readings_of_devices_that_ask(shards):
    keeper = make_device(shard="shard_1").device
    forever = make_device(shard="shard_1").device
    Device.objects.filter(pk=keeper.pk).update(raw_retention_days=30)
    for device in (keeper, forever):
        add_readings("shard_1", device, [40, 31, 29, 1])
        LatestValue.objects.on_shard("shard_1").create(
            device_id=device.pk, metric="t", ts=timezone.now(), value=1.0
        )

    summary = analyse("shard_1")

    assert summary["retention"]["readings"] == 2
    assert reading_ages("shard_1", keeper) == [29, 1]
    assert reading_ages("shard_1", forever) == [40, 31, 29, 1]
    assert LatestValue.objects.on_shard("shard_1").count() == 2
    assert analyse("shard_1")["retention"]["readings"] == 0


def test_retention_deletes_imported_uploads_after_the_configured_days(shards, settings):
    settings.UPLOAD_RETENTION_DAYS = 7
    device = make_device(shard="shard_2").device
    now = timezone.now()
    uploads = Upload.objects.on_shard("shard_2")
    kinds = {
        "old-imported": (Upload.Status.IMPORTED, now - timedelta(days=8)),
        "new-imported": (Upload.Status.IMPORTED, now - timedelta(days=6)),
        "old-staged": (Upload.Status.STAGED, None),
        "old-failed": (Upload.Status.FAILED, None),
    }
    for batch_id, (status, imported_at) in kinds.items():
        upload = uploads.create(
            device_id=device.pk, batch_id=batch_id, payload=[], reading_count=0, status=status
        )
        uploads.filter(pk=upload.pk).update(
            imported_at=imported_at, received_at=now - timedelta(days=30)
        )

    assert analyse("shard_2")["retention"]["uploads"] == 1

    left = set(uploads.filter(device_id=device.pk).values_list("batch_id", flat=True))
    assert left == {"new-imported", "old-staged", "old-failed"}


# -- devices a move holds -----------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "alerted", "deleted"),
    [(DeviceFence.State.FENCED, False, False), (DeviceFence.State.COPYING, True, False)],
)
def test_a_device_a_move_holds_is_skipped_and_done_by_the_next_run(shards, state, alerted, deleted):
    device = silent_device("shard_1", minutes=10)
    Device.objects.filter(pk=device.pk).update(raw_retention_days=1)
    add_readings("shard_1", device, [5, 0])
    command = command_with(device, S.QUEUED, timezone.now() - timedelta(minutes=1))
    set_fence("shard_1", device, state)

    analyse("shard_1")

    # Fenced: nothing touched. Copying: still owned, written (the move copies it),
    # but nothing deleted under the copy.
    expected_alerts = [("offline", Alert.State.OPEN)] if alerted else []
    assert alerts_on("shard_1", device) == expected_alerts
    assert statuses_on("shard_1", [command]) == [S.EXPIRED if alerted else S.QUEUED]
    assert reading_ages("shard_1", device) == [5, 0]

    set_fence("shard_1", device, DeviceFence.State.ACTIVE)
    summary = analyse("shard_1")

    assert alerts_on("shard_1", device) == [("offline", Alert.State.OPEN)]
    assert summary["offline"]["opened"] == (0 if alerted else 1)
    assert statuses_on("shard_1", [command]) == [S.EXPIRED]
    assert reading_ages("shard_1", device) == [0]


def test_a_device_moved_between_runs_is_analysed_once_on_its_new_shard(shards, settings):
    settings.MOVE_CLEANUP_GRACE_SECONDS = 3600  # the old copies stay on shard_1 meanwhile
    device = silent_device("shard_1", minutes=0)
    command = command_with(device, S.QUEUED, timezone.now() + timedelta(hours=1))
    first = {alias: analyse(alias) for alias in shards}
    assert first["shard_1"]["offline"]["checked"] == 1
    assert alerts_on("shard_1", device) == []

    # Time passes: the device falls silent and its command runs out; then it moves.
    DeviceStatus.objects.on_shard("shard_1").filter(device_id=device.pk).update(
        last_seen_at=timezone.now() - timedelta(minutes=10)
    )
    Command.objects.on_shard("shard_1").filter(pk=command).update(
        expires_at=timezone.now() - timedelta(minutes=1)
    )
    move_device(device.pk, "shard_2")
    runs = [{alias: analyse(alias) for alias in shards} for _ in range(2)]

    # The old shard still holds its copies, but no longer looks at them.
    assert [run["shard_1"]["offline"]["checked"] for run in runs] == [0, 0]
    assert [run["shard_1"]["expiry"]["expired"] for run in runs] == [0, 0]
    assert [run["shard_2"]["offline"]["opened"] for run in runs] == [1, 0]
    assert [run["shard_2"]["expiry"]["expired"] for run in runs] == [1, 0]
    assert alerts_on("shard_2", device) == [("offline", Alert.State.OPEN)]
    assert alerts_on("shard_1", device) == []
    assert statuses_on("shard_2", [command]) == [S.EXPIRED]
    assert statuses_on("shard_1", [command]) == [S.QUEUED]


# -- manage.py analyse ----------------------------------------------------------------


def test_the_analyse_command_runs_the_named_shard_and_prints_its_summary(shards):
    device = silent_device("shard_2", minutes=10)
    out = StringIO()
    call_command("analyse", "--shard", "shard_2", "--json", stdout=out)
    (summary,) = json.loads(out.getvalue())["shards"]
    assert summary["shard"] == "shard_2" and summary["offline"]["opened"] == 1
    assert alerts_on("shard_2", device) == [("offline", Alert.State.OPEN)]

    with pytest.raises(CommandError, match="not a serving shard: shard_9"):
        call_command("analyse", "--shard", "shard_9", stdout=StringIO())


# -- configuration in the central admin ---------------------------------------------


def test_alert_rules_and_device_analysis_settings_are_edited_on_the_device_admin(shards):
    from django.test import Client

    from core.models import AlertRule, User

    staff = User.objects.create_user("ops", password="pw", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(staff)
    device = make_device(shard="shard_1").device
    url = f"/admin/core/device/{device.pk}/change/"
    page = client.get(url).content.decode()
    assert 'name="report_interval_s"' in page and 'name="raw_retention_days"' in page
    assert 'name="alert_rules-TOTAL_FORMS"' in page

    answer = client.post(
        url,
        {
            "serial": device.serial,
            "name": "",
            "is_active": "on",
            "report_interval_s": "120",
            "raw_retention_days": "30",
            "deviceaccess_set-TOTAL_FORMS": "0",
            "deviceaccess_set-INITIAL_FORMS": "0",
            "alert_rules-TOTAL_FORMS": "1",
            "alert_rules-INITIAL_FORMS": "0",
            "alert_rules-0-metric": "temp",
            "alert_rules-0-kind": "zscore",
            "alert_rules-0-threshold": "3",
            "alert_rules-0-window_minutes": "30",
            "alert_rules-0-severity": "critical",
            "alert_rules-0-enabled": "on",
        },
    )
    assert answer.status_code == 302, answer.content.decode()[:2000]
    device.refresh_from_db()
    assert (device.report_interval_s, device.raw_retention_days) == (120, 30)
    (saved,) = AlertRule.objects.filter(device=device)
    assert (saved.condition, saved.threshold, saved.window_minutes) == ("zscore:temp", 3, 30)
