"""The central admin's actions and ops pages: credentials, commands, moves, shards, cluster."""

import re

import pytest
import redis
from django.conf import settings
from django.contrib.messages import get_messages
from django.test import Client, override_settings

from core.credentials import device_id_for_token
from core.models import MoveJob, Placement, Rebalance, Shard, User
from shards.commands import create_command
from shards.models import Command
from shards.moves.protocol import start_move
from tests.factories import make_device, make_user
from tests.test_portal_support import parse_html
from tests.waiting import wait_until


@pytest.fixture
def staff(shards) -> Client:
    client = Client()
    client.force_login(
        User.objects.create_user("ops", password="pw", is_staff=True, is_superuser=True)
    )
    return client


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


# --- credentials --------------------------------------------------------------------------


def test_rotate_shows_a_new_token_once_and_revoke_refuses_every_token(staff):
    made = make_device(shard="shard_1")
    device = made.device
    rotated = staff.post(f"/admin/core/device/{device.pk}/rotate/")
    assert rotated.status_code == 200
    new_token = re.search(r'<code id="new-token">([^<]+)</code>', rotated.content.decode())[1]
    assert new_token != made.token
    assert device_id_for_token(new_token) == device.pk
    assert device_id_for_token(made.token) == device.pk  # still inside the rotation grace
    # Shown once, on this answer alone: nothing client-side or in the session keeps it.
    assert "no-store" in rotated["Cache-Control"]
    assert not messages_of(rotated)
    for cookie in rotated.cookies.values():
        assert new_token not in cookie.value
    assert new_token not in str(dict(staff.session))
    assert new_token not in staff.get(f"/admin/core/device/{device.pk}/change/").content.decode()

    revoked = staff.post(f"/admin/core/device/{device.pk}/revoke/")
    assert revoked.status_code == 302
    assert device_id_for_token(new_token) is None
    assert device_id_for_token(made.token) is None


# --- commands -----------------------------------------------------------------------------


def test_commands_are_created_and_cancelled_on_the_shard(staff):
    device = make_device(shard="shard_2").device
    created = staff.post(
        f"/admin/core/device/{device.pk}/commands/",
        {"name": "set-rate", "args": '{"hz": 2}', "expires_in": "600"},
    )
    assert created.status_code == 302
    (command,) = Command.objects.on_shard("shard_2").filter(device_id=device.pk)
    assert (command.name, command.args, command.status) == ("set-rate", {"hz": 2}, "queued")
    assert not Command.objects.on_shard("shard_1").filter(device_id=device.pk).exists()

    cancelled = staff.post(f"/admin/core/device/{device.pk}/commands/{command.pk}/cancel/")
    assert cancelled.status_code == 302
    command.refresh_from_db(using="shard_2")
    assert command.status == "cancelled"

    again = staff.post(f"/admin/core/device/{device.pk}/commands/{command.pk}/cancel/")
    assert again.status_code == 302
    assert any("already cancelled" in m for m in messages_of(again))


def test_commands_need_the_command_permission_and_the_form_says_so(shards):
    device = make_device(shard="shard_2").device
    queued = create_command(device.pk, "theirs")
    editor = Client()
    editor.force_login(make_user("editor", "core.view_device", "core.change_device", is_staff=True))
    page = editor.get(f"/admin/core/device/{device.pk}/change/").content.decode()
    assert "Send command" not in page and "/cancel/" not in page
    assert (
        editor.post(f"/admin/core/device/{device.pk}/commands/", {"name": "x"}).status_code == 403
    )
    cancel = f"/admin/core/device/{device.pk}/commands/{queued.pk}/cancel/"
    assert editor.post(cancel).status_code == 403
    assert [c.status for c in Command.objects.for_device(device)] == ["queued"]
    # The change permission still rotates tokens.
    assert editor.post(f"/admin/core/device/{device.pk}/rotate/").status_code == 200


def test_a_command_of_another_device_on_the_same_shard_is_not_cancelled(staff):
    mine, theirs = (make_device(shard="shard_1").device for _ in range(2))
    command = create_command(theirs.pk, "theirs")
    answer = staff.post(f"/admin/core/device/{mine.pk}/commands/{command.pk}/cancel/")
    assert any("Not cancelled" in m for m in messages_of(answer))
    assert Command.objects.for_device(theirs).get(pk=command.pk).status == "queued"


def test_a_bad_command_is_refused_and_nothing_is_written(staff):
    device = make_device(shard="shard_1").device
    for bad in ({"name": "no spaces"}, {"name": "ok", "args": "[1]"}, {"name": "ok", "args": "{"}):
        answer = staff.post(f"/admin/core/device/{device.pk}/commands/", bad)
        assert answer.status_code == 302
        assert any("not created" in m for m in messages_of(answer)), bad
    assert not Command.objects.on_shard("shard_1").filter(device_id=device.pk).exists()


# --- moves --------------------------------------------------------------------------------


def test_the_move_action_runs_a_job_on_the_worker(staff, celery_worker):
    device = make_device(shard="shard_1").device
    answer = staff.post(f"/admin/core/device/{device.pk}/move/", {"target": "shard_2"})
    assert answer.status_code == 302
    assert answer["Location"] == f"/admin/core/device/{device.pk}/change/"
    job = MoveJob.objects.get(device=device)
    assert (job.source_id, job.target_id) == ("shard_1", "shard_2")

    page = staff.get(answer["Location"]).content.decode()
    assert re.search(rf'id="move-progress" data-phase="{job.phase}"|id="move-progress"', page)
    assert f'data-url="/admin/fleet/moves/{job.pk}/"' in page

    def released() -> bool:
        return staff.get(f"/admin/fleet/moves/{job.pk}/").json()["final"]

    wait_until(released, what=f"move {job.pk}", timeout=90)
    assert staff.get(f"/admin/fleet/moves/{job.pk}/").json()["phase"] in ("released", "done")
    assert Placement.objects.get(device=device).shard_id == "shard_2"
    page = staff.get(answer["Location"]).content.decode()
    assert 'id="placement" data-shard="shard_2"' in page
    assert 'data-final="true"' in page


def test_bad_moves_are_refused_and_start_nothing(staff):
    device = make_device(shard="shard_1").device
    for target in ("shard_1", "shard_nope", ""):
        answer = staff.post(f"/admin/core/device/{device.pk}/move/", {"target": target})
        assert answer.status_code == 302
        assert any(m.startswith("Not moved") for m in messages_of(answer)), target
    assert not MoveJob.objects.exists()

    running = start_move(device.pk, "shard_2", requested_by="test")  # recorded, not run
    answer = staff.post(f"/admin/core/device/{device.pk}/move/", {"target": "shard_2"})
    assert any("already being moved" in m for m in messages_of(answer))
    assert list(MoveJob.objects.values_list("pk", flat=True)) == [running.pk]


# --- shards -------------------------------------------------------------------------------


def test_the_shards_page_shows_figures_and_marks_a_dead_shard(staff, three_shards, dead_shard):
    for alias, count in (("shard_1", 3), ("shard_2", 1), ("shard_3", 2)):
        for _ in range(count):
            make_device(shard=alias)
    answer = staff.get("/admin/core/shard/")
    assert answer.status_code == 200
    rows = {shard.alias: shard for shard in answer.context["cl"].result_list}
    assert {a: rows[a].device_count for a in three_shards} == {
        "shard_1": 3,
        "shard_2": 1,
        "shard_3": 2,
    }
    for alias in three_shards:
        figures = rows[alias]._fleet_figures
        assert figures.reachable and figures.latency_ms > 0 and figures.size_bytes > 1_000_000
        # Each shard's pool, as its PgBouncer says: within the cap.
        assert 1 <= figures.pool.servers <= figures.pool.max_connections
    assert not rows[dead_shard]._fleet_figures.reachable
    body = answer.content.decode()
    assert body.count(">unreachable<") == 1
    assert body.count(">clients ") >= len(three_shards)  # the pool column
    # The shard's own page too.
    page = staff.get(f"/admin/core/shard/{dead_shard}/change/")
    assert page.status_code == 200 and "unreachable" in page.content.decode()
    pool_row = parse_html(staff.get("/admin/core/shard/shard_1/change/").content).one(
        id="shard-pool"
    )
    assert re.search(r"\d+ clients active, \d+ waiting .* \d+ server connections", pool_row.text)
    # And which server is the primary, with its standbys (the unit suite's have none).
    page = parse_html(staff.get("/admin/core/shard/shard_1/change/").content)
    replication_row = page.one(id="shard-replication")
    assert re.search(r"primary 127\.0\.0\.1:\d+, no standby", replication_row.text)
    assert body.count(", no standby") >= len(three_shards)  # the replication column


def test_change_weight(staff):
    answer = staff.post("/admin/core/shard/shard_2/weight/", {"weight": "250"})
    assert answer.status_code == 302
    assert Shard.objects.get(alias="shard_2").weight == 250
    for bad in ("-3", "lots", ""):
        staff.post("/admin/core/shard/shard_2/weight/", {"weight": bad})
    assert Shard.objects.get(alias="shard_2").weight == 250


def test_drain_marks_the_shard_draining_and_moves_its_devices_off(
    staff, three_shards, celery_worker
):
    leaving = [make_device(shard="shard_3").device for _ in range(2)]
    staying = make_device(shard="shard_1").device
    pinned = make_device(shard="shard_3", pin=True).device

    refused = staff.post("/admin/core/shard/shard_3/drain/")
    assert any("pinned" in m for m in messages_of(refused))
    assert Shard.objects.get(alias="shard_3").state == "active"
    Placement.objects.filter(device=pinned).update(pinned=False)

    answer = staff.post("/admin/core/shard/shard_3/drain/", {"cost": "devices"})
    assert answer.status_code == 302
    assert Shard.objects.get(alias="shard_3").state == "draining"

    def emptied() -> bool:
        return not Placement.objects.filter(shard_id="shard_3").exists()

    wait_until(emptied, what="shard_3 to be drained", timeout=90)
    for device in [*leaving, pinned]:
        assert Placement.objects.get(device=device).shard_id in ("shard_1", "shard_2")
    assert Placement.objects.get(device=staying).shard_id == "shard_1"
    run = Rebalance.objects.get(kind="drain:shard_3")
    wait_until(
        lambda: Rebalance.objects.get(pk=run.pk).state == "finished", what="the run", timeout=90
    )
    page = staff.get("/admin/core/shard/shard_3/change/").content.decode()
    assert f'data-run="{run.pk}"' in page


# --- the cluster page ---------------------------------------------------------------------


@override_settings(HAPROXY_STATS_ADDRESS="127.0.0.1:1", HAPROXY_STATS_ADDRESSES=[])
def test_the_cluster_page_shows_an_unreachable_haproxy(staff):
    answer = staff.get("/admin/fleet/cluster/")
    assert answer.status_code == 200
    body = answer.content.decode()
    assert body.count('class="fleet-table haproxy-servers"') == 1
    assert 'data-balancer="127.0.0.1:1"' in body
    assert "HAProxy stats unreachable" in body
    assert "data-server=" not in body
    assert 'data-shard="shard_1"' in body and 'data-shard="shard_2"' in body


def test_the_cluster_page_shows_each_balancer_a_dead_one_as_unreachable(staff):
    running = settings.HAPROXY_STATS_ADDRESS  # the local cluster's HAProxy
    with override_settings(HAPROXY_STATS_ADDRESSES=["127.0.0.1:1", running]):
        answer = staff.get("/admin/fleet/cluster/")
    assert answer.status_code == 200
    sections = answer.content.decode().split('<section class="fleet-panel fleet-wide haproxy"')[1:]
    assert len(sections) == 2
    dead, alive = sections[0], sections[1].split("</section>")[0]
    assert 'data-balancer="127.0.0.1:1"' in dead and "HAProxy stats unreachable" in dead
    assert "data-server=" not in dead
    assert f'data-balancer="{running}"' in alive and "haproxy-error" not in alive
    assert re.search(r'<tr data-server="app-', alive), alive


@override_settings(
    CELERY_TASK_DEFAULT_QUEUE="admin-test-queue",
    HAPROXY_STATS_ADDRESS="127.0.0.1:1",
    HAPROXY_STATS_ADDRESSES=[],
)
def test_the_cluster_page_shows_the_queue_length_from_the_broker(staff):
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete("admin-test-queue")
    broker.rpush("admin-test-queue", *[b"message"] * 7)
    try:
        body = staff.get("/admin/fleet/cluster/").content.decode()
    finally:
        broker.delete("admin-test-queue")
    assert re.search(r'id="queue-length">\s*7 waiting', body), body


@override_settings(
    CELERY_BROKER_URL="redis://127.0.0.1:1/0",
    HAPROXY_STATS_ADDRESS="127.0.0.1:1",
    HAPROXY_STATS_ADDRESSES=[],
)
def test_the_cluster_page_shows_an_unreachable_broker(staff):
    answer = staff.get("/admin/fleet/cluster/")
    assert answer.status_code == 200
    assert re.search(
        r'id="queue-length"><span class="fleet-unreachable">unreachable', (answer.content.decode())
    )


def test_the_cluster_page_reads_the_running_haproxy(staff):
    from central_admin.haproxy_status import read_haproxy

    status = read_haproxy()
    # `make test` starts the local cluster first; run `make up` before pytest by hand.
    assert not status.error, f"the local cluster's HAProxy does not answer: {status.error}"
    body = staff.get("/admin/fleet/cluster/").content.decode()
    for server in status.servers:
        row = re.search(rf'<tr data-server="{server.name}">.*?</tr>', body, re.S).group(0)
        assert f'">{server.status}</td>' in row
    assert any(server.name.startswith("app-") for server in status.servers)
