"""The central admin's device list and page: access, query budget, filters, what it shows."""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.db import connections
from django.db.backends.signals import connection_created
from django.test import Client
from django.utils import timezone

from core.models import MoveJob, User
from shards.alerts import raise_alert
from shards.commands import create_command
from shards.models import DeviceStatus, Upload
from tests.factories import make_device, make_user
from tests.querylog import QueryLog


def client_for(user: User | None, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    if user is not None:
        client.force_login(user)
    return client


@pytest.fixture
def people(shards) -> dict[str, User]:
    return {
        "staff": User.objects.create_user("ops", password="pw", is_staff=True, is_superuser=True),
        "plain": User.objects.create_user("web", password="pw"),
    }


@contextmanager
def queries_in_every_thread() -> Iterator[QueryLog]:
    """Like tests.querylog.queries_by_alias, but also in the fan-out's threads.

    Fan-out threads open connections of their own; each is wrapped as it is created.
    """
    log = QueryLog()

    def recorder(alias: str):
        def record(execute, sql, params, many, context):
            log.setdefault(alias, []).append(sql)
            return execute(sql, params, many, context)

        record.fleet_recorder = True
        return record

    def wrap(connection) -> None:
        if not any(getattr(w, "fleet_recorder", False) for w in connection.execute_wrappers):
            connection.execute_wrappers.append(recorder(connection.alias))

    def on_connect(sender, connection, **kwargs) -> None:
        wrap(connection)

    wrapped = []
    for alias in list(connections.settings):
        wrap(connections[alias])
        wrapped.append(connections[alias])
    connection_created.connect(on_connect)
    try:
        yield log
    finally:
        connection_created.disconnect(on_connect)
        for connection in wrapped:
            connection.execute_wrappers[:] = [
                w for w in connection.execute_wrappers if not getattr(w, "fleet_recorder", False)
            ]


def listed_ids(response) -> set[int]:
    assert response.status_code == 200
    return {device.pk for device in response.context["cl"].result_list}


# --- access -----------------------------------------------------------------------------


def test_every_admin_page_needs_a_staff_login(people):
    device = make_device(shard="shard_1").device
    job = MoveJob.objects.create(device=device, source_id="shard_1", target_id="shard_2", epoch=2)
    pages = [
        "/admin/",
        "/admin/core/device/",
        f"/admin/core/device/{device.pk}/change/",
        "/admin/core/shard/",
        "/admin/core/shard/shard_1/change/",
        "/admin/fleet/cluster/",
        f"/admin/fleet/moves/{job.pk}/",
    ]
    for page in pages:
        for who in (None, people["plain"]):
            answer = client_for(who).get(page)
            assert answer.status_code == 302, (page, who)
            assert answer["Location"].startswith("/admin/login/"), page
        assert client_for(people["staff"]).get(page).status_code == 200, page
        # Staff without permissions get past the login and no further.
        bare = client_for(make_user("bare-" + str(len(page)) + page[-8:], is_staff=True))
        assert bare.get(page).status_code == (200 if page == "/admin/" else 403), page


def test_every_admin_action_needs_a_staff_login(people):
    device = make_device(shard="shard_1").device
    actions = [
        f"/admin/core/device/{device.pk}/rotate/",
        f"/admin/core/device/{device.pk}/revoke/",
        f"/admin/core/device/{device.pk}/commands/",
        f"/admin/core/device/{device.pk}/commands/1/cancel/",
        f"/admin/core/device/{device.pk}/alerts/1/acknowledge/",
        f"/admin/core/device/{device.pk}/move/",
        "/admin/core/shard/shard_1/weight/",
        "/admin/core/shard/shard_1/drain/",
    ]
    for action in actions:
        for who in (None, people["plain"]):
            answer = client_for(who).post(action, {"weight": "1", "target": "shard_2"})
            assert answer.status_code == 302, (action, who)
            assert answer["Location"].startswith("/admin/login/"), action
        # A GET changes nothing.
        assert client_for(people["staff"]).get(action).status_code == 405, action
    assert device.credentials.filter(revoked_at__isnull=False).count() == 0
    assert not MoveJob.objects.exists()


def test_unknown_device_or_job_is_404(people):
    staff = client_for(people["staff"])
    assert staff.get("/admin/core/device/999999/change/").status_code == 404
    assert staff.get("/admin/fleet/moves/999999/").status_code == 404
    assert staff.post("/admin/core/device/999999/rotate/").status_code == 404
    assert staff.post("/admin/core/device/999999/move/", {"target": "shard_2"}).status_code == 404
    assert staff.post("/admin/core/shard/nope/weight/", {"weight": "5"}).status_code == 404


def test_post_actions_need_the_csrf_token(people):
    device = make_device(shard="shard_1").device
    client = client_for(people["staff"], csrf=True)
    refused = client.post(f"/admin/core/device/{device.pk}/revoke/")
    assert refused.status_code == 403
    assert device.credentials.filter(revoked_at__isnull=False).count() == 0

    page = client.get(f"/admin/core/device/{device.pk}/change/")
    token = page.cookies["csrftoken"].value
    accepted = client.post(
        f"/admin/core/device/{device.pk}/revoke/", {"csrfmiddlewaretoken": token}
    )
    assert accepted.status_code == 302
    assert device.credentials.filter(revoked_at__isnull=False).count() == 1


# --- the device list ----------------------------------------------------------------------


@pytest.fixture
def fleet(three_shards, people) -> dict:
    """150 devices over three shards; every third seen just now; owner X has ten of them."""
    owner = User.objects.create_user("owner-x", password="pw")
    devices = []
    for i in range(150):
        alias = three_shards[i % 3]
        users = [owner] if i < 10 else []
        devices.append(make_device(shard=alias, users=users, name=f"pump {i:03d}").device)
    online = set()
    for device in devices[::3]:
        alias = device.placement.shard_id
        DeviceStatus.objects.on_shard(alias).create(
            device_id=device.pk, last_seen_at=timezone.now()
        )
        online.add(device.pk)
    # Seen long ago: offline.
    stale = devices[1]
    DeviceStatus.objects.on_shard(stale.placement.shard_id).create(
        device_id=stale.pk, last_seen_at=timezone.now() - timedelta(days=2)
    )
    return {"devices": devices, "online": online, "owner": owner, "shards": three_shards}


def test_the_device_list_asks_each_shard_once_per_page(fleet, people):
    client = client_for(people["staff"])
    client.get("/admin/core/device/")  # warm the shard registry and the session
    with queries_in_every_thread() as log:
        answer = client.get("/admin/core/device/")
    assert answer.status_code == 200
    shown = answer.context["cl"].result_list
    assert len(shown) == 100
    for alias in fleet["shards"]:
        assert log.count(alias) == 1, (alias, log.get(alias))
    assert log.count("default") <= 12, log["default"]
    # The figures came from the shards: the state column says online for seen devices.
    body = answer.content.decode()
    assert body.count('class="fleet-state online"') == sum(
        1 for d in shown if d.pk in fleet["online"]
    )


def test_the_list_filters_by_shard_online_owner_and_searches(fleet, people):
    client = client_for(people["staff"])
    devices = fleet["devices"]
    all_ids = {d.pk for d in devices}

    on_3 = listed_ids(client.get("/admin/core/device/", {"shard": "shard_3", "all": ""}))
    assert on_3 == {d.pk for d in devices if d.placement.shard_id == "shard_3"}
    assert len(on_3) == 50

    online = listed_ids(client.get("/admin/core/device/", {"online": "online", "all": ""}))
    assert online == fleet["online"]
    offline = listed_ids(client.get("/admin/core/device/", {"online": "offline", "all": ""}))
    assert offline == all_ids - fleet["online"]

    mine = listed_ids(client.get("/admin/core/device/", {"owner": fleet["owner"].pk}))
    assert mine == {d.pk for d in devices[:10]}

    by_serial = listed_ids(client.get("/admin/core/device/", {"q": devices[42].serial}))
    assert by_serial == {devices[42].pk}
    by_name = listed_ids(client.get("/admin/core/device/", {"q": "pump 149"}))
    assert by_name == {devices[149].pk}

    inactive = devices[7]
    inactive.is_active = False
    inactive.save()
    assert listed_ids(client.get("/admin/core/device/", {"is_active__exact": "0"})) == {inactive.pk}


def test_a_row_links_to_the_device_page(fleet, people):
    device = fleet["devices"][5]
    answer = client_for(people["staff"]).get("/admin/core/device/", {"q": device.serial})
    assert f'href="/admin/core/device/{device.pk}/change/"' in answer.content.decode()


def test_a_dead_shard_does_not_break_the_list(people, dead_shard):
    alive = make_device(shard="shard_1").device
    answer = client_for(people["staff"]).get("/admin/core/device/", {"online": "online"})
    assert answer.status_code == 200
    assert listed_ids(answer) == set()
    assert "shard_dead" in answer.content.decode()  # named as unreachable
    assert listed_ids(client_for(people["staff"]).get("/admin/core/device/")) == {alive.pk}


# --- the device page ----------------------------------------------------------------------


def test_the_device_page_shows_placement_moves_commands_alerts_uploads(people):
    device = make_device(shard="shard_1", name="Pump 7").device
    job = MoveJob.objects.create(
        device=device,
        source_id="shard_1",
        target_id="shard_2",
        epoch=2,
        phase=MoveJob.Phase.ROLLED_BACK,
        error="test rollback",
    )
    command = create_command(device.pk, "reboot-now", {"delay": 5})
    alert, _ = raise_alert(device.pk, "max:temperature", "too hot", value=99.0)
    upload = Upload.objects.on_shard("shard_1").create(
        device_id=device.pk, batch_id="batch-xyz-1", payload=[], reading_count=17
    )

    answer = client_for(people["staff"]).get(f"/admin/core/device/{device.pk}/change/")
    assert answer.status_code == 200
    body = answer.content.decode()
    assert re.search(r'id="placement" data-shard="shard_1">shard_1<', body)
    assert f'data-job="{job.pk}"' in body and "test rollback" in body
    assert f'data-command="{command.pk}"' in body and "reboot-now" in body
    assert f'data-alert="{alert.pk}"' in body and "max:temperature" in body
    assert f'data-upload="{upload.pk}"' in body and "batch-xyz-1" in body
    assert "<td>17</td>" in body
    # The move form offers the other active shards only.
    form = re.search(r'<form id="move-form".*?</form>', body, re.S).group(0)
    assert 'value="shard_2"' in form and 'value="shard_1"' not in form
    assert ">Move</button>" in form


def test_the_device_page_survives_its_shard_being_down(people, dead_shard):
    from core.models import Placement
    from routers.placement import invalidate_placement

    device = make_device(shard="shard_1").device
    Placement.objects.filter(device=device).update(shard_id=dead_shard)
    invalidate_placement(device)  # as a move there would have left it
    answer = client_for(people["staff"]).get(f"/admin/core/device/{device.pk}/change/")
    assert answer.status_code == 200
    body = answer.content.decode()
    assert 'data-shard="shard_dead"' in body
    assert "unreachable" in body
