"""A change to a device's state or credentials bites on every node within 2 s, from any path.

`tests.other_node` is a process of its own with its own in-process caches, sharing
Redis and the directory: what any other app node would answer for a token.
"""

import threading

import pytest
from django.core.management import call_command
from django.db import transaction

from core.credentials import device_id_for_token, issue_token
from core.models import Device, DeviceCredential, MoveJob, Shard
from routers.registry import refresh_registry, unregister_shard_connection
from shards.moves.protocol import move_device, start_move
from tests.admin_forms import admin_form_data
from tests.factories import make_device
from tests.move_helpers import device_rows, fence_of, populate_device, total_rows
from tests.waiting import wait_until

BITES_WITHIN = 2.0


def change_url(device: Device) -> str:
    return f"/admin/core/device/{device.pk}/change/"


def seconds_until_answer(node, token: str, expected: int | None) -> float:
    return wait_until(
        lambda: node.device_for(token) == expected,
        f"the other node to answer {expected} for the token",
        timeout=15,
        interval=0.02,
    )


def test_deactivating_and_reactivating_in_the_admin_bites_on_other_nodes(root_client, other_node):
    made = make_device(shard="shard_1")
    assert other_node.device_for(made.token) == made.device.pk  # its caches are warm

    form = admin_form_data(root_client.get(change_url(made.device)))
    del form["is_active"]
    assert root_client.post(change_url(made.device), form).status_code == 302
    assert seconds_until_answer(other_node, made.token, None) <= BITES_WITHIN

    form["is_active"] = "on"
    assert root_client.post(change_url(made.device), form).status_code == 302
    assert seconds_until_answer(other_node, made.token, made.device.pk) <= BITES_WITHIN


def test_the_admins_bulk_actions_bite_on_other_nodes(root_client, other_node):
    made = [make_device(shard=alias) for alias in ("shard_1", "shard_2")]
    for m in made:
        assert other_node.device_for(m.token) == m.device.pk
    selected = {"_selected_action": [m.device.pk for m in made]}
    answer = root_client.post("/admin/core/device/", {"action": "deactivate_devices", **selected})
    assert answer.status_code == 302
    for m in made:
        assert seconds_until_answer(other_node, m.token, None) <= BITES_WITHIN
    root_client.post("/admin/core/device/", {"action": "activate_devices", **selected})
    for m in made:
        assert seconds_until_answer(other_node, m.token, m.device.pk) <= BITES_WITHIN


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda d: Device.objects.filter(pk=d.pk).update(is_active=False), id="update"),
        pytest.param(lambda d: call_command("device_credentials", "revoke", d.serial), id="revoke"),
        pytest.param(
            lambda d: d.credentials.update(expires_at="2000-01-01T00:00:00Z"), id="expire"
        ),
        pytest.param(lambda d: d.credentials.all().delete(), id="delete-credentials"),
    ],
)
def test_every_other_path_bites_on_other_nodes(shards, other_node, change):
    made = make_device(shard="shard_2")
    assert other_node.device_for(made.token) == made.device.pk
    change(made.device)
    assert seconds_until_answer(other_node, made.token, None) <= BITES_WITHIN


def test_a_probe_during_enrolment_does_not_block_the_new_token(shards, other_node):
    """A lookup of a credential that is not committed yet must not outlive its creation."""
    device = make_device(shard="shard_1").device
    probed = threading.Event()
    with transaction.atomic():
        token = issue_token(device)

        def probe() -> None:  # another connection: it cannot see the uncommitted row
            assert device_id_for_token(token) is None
            assert other_node.device_for(token) is None
            probed.set()

        thread = threading.Thread(target=probe)
        thread.start()
        thread.join()
        assert probed.is_set()
    assert device_id_for_token(token) == device.pk
    assert other_node.device_for(token) == device.pk


def test_token_key_ids_are_random_and_old_numeric_ones_still_work(shards):
    made = [make_device() for _ in range(3)]
    key_ids = [m.token.split(".", 1)[0] for m in made]
    assert len(set(key_ids)) == 3
    assert all(len(key_id) >= 16 and not key_id.isdigit() for key_id in key_ids)
    # A token issued before key ids were random carries the credential's number.
    credential = DeviceCredential.objects.get(device=made[0].device)
    secret = made[0].token.split(".", 1)[1]
    DeviceCredential.objects.filter(pk=credential.pk).update(key_id=str(credential.pk))
    assert device_id_for_token(f"{credential.pk}.{secret}") == made[0].device.pk


@pytest.mark.parametrize("token", ["\xb2.x", "1\xb2.x", "\u0661\u0662.secret", "1.\xb2", "٣.abc"])
def test_unicode_digits_in_a_token_are_just_a_wrong_token(shards, token):
    assert device_id_for_token(token) is None


def test_deleting_a_device_in_the_admin_removes_its_rows_from_every_shard(
    shards, root_client, other_node, celery_worker
):
    device = make_device(shard="shard_1").device
    neighbour = make_device(shard="shard_1").device
    populate_device(device)
    populate_device(neighbour)
    token = issue_token(device)
    # Moved once: its old rows wait on shard_1 for the cleanup grace period.
    assert move_device(device.pk, "shard_2").phase == MoveJob.Phase.RELEASED
    assert total_rows("shard_1", device.pk) and total_rows("shard_2", device.pk)
    neighbour_rows = device_rows("shard_1", neighbour.pk)
    assert other_node.device_for(token) == device.pk

    confirm = root_client.get(f"/admin/core/device/{device.pk}/delete/")
    assert confirm.status_code == 200
    assert (
        root_client.post(f"/admin/core/device/{device.pk}/delete/", {"post": "yes"}).status_code
        == 302
    )
    assert seconds_until_answer(other_node, token, None) <= BITES_WITHIN

    from core.models import DeviceDeletion  # new: imported here so the rest runs on old code

    deletion = DeviceDeletion.objects.get(device_id=device.pk)
    wait_until(
        lambda: DeviceDeletion.objects.get(pk=deletion.pk).finished_at is not None,
        "the background purge",
    )
    for alias in shards:
        assert total_rows(alias, device.pk) == 0, alias
        assert fence_of(alias, device.pk) is None, alias
    assert device_rows("shard_1", neighbour.pk) == neighbour_rows
    assert not MoveJob.objects.filter(device_id=device.pk).exists()


def test_a_deletion_left_by_a_dead_shard_is_finished_later(shards, dead_shard):
    from core.models import DeviceDeletion
    from shards.deletion import purge_pending_deletions

    device = make_device(shard="shard_2").device
    device_id = device.pk
    populate_device(device)
    device.delete()  # its purge task is queued too: a worker, if one runs, races us
    deletion = DeviceDeletion.objects.get(device_id=device_id)
    assert purge_pending_deletions() == 0  # shard_dead cannot be reached
    deletion.refresh_from_db()
    assert deletion.finished_at is None and "shard_dead" in deletion.error
    assert total_rows("shard_2", device_id) == 0  # the reachable shards are done already

    Shard.objects.filter(alias=dead_shard).update(state=Shard.State.RETIRED)
    unregister_shard_connection(dead_shard)
    purge_pending_deletions()  # (or the worker's task) finishes it, and nothing undoes that
    wait_until(
        lambda: DeviceDeletion.objects.get(pk=deletion.pk).finished_at is not None,
        "the deletion to finish",
        timeout=15,
    )
    assert DeviceDeletion.objects.get(pk=deletion.pk).error == ""


def test_a_deletion_is_not_finished_while_a_shard_added_elsewhere_is_unreached(shards):
    """Another process registered a shard this one has not re-read the registry for yet:
    the purge must still count it (here it cannot be reached, so nothing is finished)."""
    from core.models import DeviceDeletion
    from shards.deletion import purge_pending_deletions

    refresh_registry(force=True)  # this process's copy, from before the new shard
    device = make_device(shard="shard_2").device
    device_id = device.pk
    Shard.objects.create(alias="shard_new", number=98, host="127.0.0.1", port=1, db_name="x")
    try:
        device.delete()
        assert purge_pending_deletions() == 0
        deletion = DeviceDeletion.objects.get(device_id=device_id)
        assert deletion.finished_at is None and "shard_new" in deletion.error
    finally:
        unregister_shard_connection("shard_new")


def test_a_device_with_a_move_in_flight_cannot_be_deleted(root_client):
    device = make_device(shard="shard_1").device
    job = start_move(device.pk, "shard_2")
    page = root_client.get(f"/admin/core/device/{device.pk}/delete/")
    assert page.status_code == 200
    assert "protected" in page.content.decode()
    assert root_client.post(
        f"/admin/core/device/{device.pk}/delete/", {"post": "yes"}
    ).status_code in (
        200,
        403,
    )
    assert Device.objects.filter(pk=device.pk).exists()
    assert MoveJob.objects.filter(pk=job.pk).exists()
