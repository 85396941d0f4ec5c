"""The device list: only my devices, status and latest values, one query per shard."""

from core.models import Device, DeviceAccess, Placement
from shards.models import LatestValue
from tests import test_portal_support as support
from tests.factories import T0, make_device
from tests.test_portal_support import login, parse_html, queries_in_every_thread

world = support.world


def rows_of(content: bytes) -> dict[str, support.Element]:
    table = parse_html(content).one("table", id="device-list")
    return {
        row.attrs["data-device-id"]: row
        for row in table.find_all("tr")
        if row.attrs.get("data-device-id")
    }


def test_my_devices_across_shards_with_status_and_latest_values(world):
    answer = login(world["x"]).get("/devices/")
    assert answer.status_code == 200
    rows = rows_of(answer.content)
    a1, a2 = world["a1"].device, world["a2"].device
    assert set(rows) == {str(a1.pk), str(a2.pk)}
    link = rows[str(a1.pk)].one("a", href=f"/devices/{a1.pk}/")
    assert link.text.strip() == "Pump A1"
    # No name: the serial stands in.
    assert rows[str(a2.pk)].one("a", href=f"/devices/{a2.pk}/").text.strip() == a2.serial
    assert rows[str(a1.pk)].one("td", class_="status").text.strip() == "online"
    assert rows[str(a2.pk)].one("td", class_="status").text.strip() == "offline"
    latest = " ".join(rows[str(a1.pk)].one("td", class_="latest").text.split())
    assert "humidity 41" in latest and "temp 59" in latest


def test_a_shard_that_does_not_answer_is_named_and_its_devices_unknown(world, dead_shard):
    device = Device.objects.create(serial="on-a-dead-shard", name="Lost")
    Placement.objects.create(device=device, shard_id=dead_shard)
    DeviceAccess.objects.create(device=device, user=world["x"])
    answer = login(world["x"]).get("/devices/")
    assert answer.status_code == 200
    rows = rows_of(answer.content)
    assert rows[str(device.pk)].one("td", class_="status").text.strip() == "unknown"
    assert rows[str(world["a1"].device.pk)].one("td", class_="status").text.strip() == "online"
    notice = parse_html(answer.content).one(id="unavailable-shards")
    assert dead_shard in notice.text


def test_two_hundred_devices_on_three_shards_cost_one_query_per_shard(three_shards, world):
    user = world["y"]
    for i in range(200):
        shard = three_shards[i % 3]
        device = make_device(shard=shard, users=[user]).device
        LatestValue.objects.for_device(device).create(
            device_id=device.pk, metric="temp", ts=T0, value=float(i)
        )
    client = login(user)
    with queries_in_every_thread() as log:
        answer = client.get("/devices/")
    assert answer.status_code == 200
    assert len(rows_of(answer.content)) == 201  # and b1 from the world
    for alias in three_shards:
        assert log.count(alias) == 1, (alias, log.get(alias))
    # Session, user, then devices with their placement in one join (and at most a
    # registry refresh): constant, however many devices there are.
    assert log.count("default") <= 5, log["default"]


def test_huge_latest_values_are_shown_compactly(world):
    """1.7e308 is a legal reading: the list used to print all 309 of its digits."""
    device = world["a1"].device
    latest = LatestValue.objects.for_device(device).filter(device_id=device.pk)
    latest.filter(metric="temp").update(value=1.7e308)
    latest.filter(metric="humidity").update(value=-1.2345678901e-300)
    answer = login(world["x"]).get("/devices/")
    assert answer.status_code == 200
    cell = rows_of(answer.content)[str(device.pk)].one("td", class_="latest")
    shown = [" ".join(value.text.split()) for value in cell.find_all("span", class_="value")]
    assert shown == ["humidity -1.23457e-300", "temp 1.7e+308"]
