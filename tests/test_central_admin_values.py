"""The central admin shows readings as the portal does: six significant digits at most."""

from django.test import Client

from core.models import User
from shards.models import LatestValue
from tests.factories import T0, make_device


def test_huge_and_tiny_latest_values_are_shown_compactly(shards):
    staff = User.objects.create_user("ops", password="pw", is_staff=True, is_superuser=True)
    device = make_device(shard="shard_1", name="Pump 9").device
    for metric, value in (("temp", 1.7e308), ("humidity", -1.2345678901e-300), ("rpm", 0.1 + 0.2)):
        LatestValue.objects.for_device(device).create(
            device_id=device.pk, metric=metric, ts=T0, value=value
        )
    client = Client()
    client.force_login(staff)

    listed = client.get("/admin/core/device/", {"q": device.serial})
    page = client.get(f"/admin/core/device/{device.pk}/change/")

    assert (listed.status_code, page.status_code) == (200, 200)
    assert "humidity=-1.23457e-300, rpm=0.3, temp=1.7e+308" in listed.content.decode()
    body = page.content.decode()
    for shown in ("<td>1.7e+308</td>", "<td>-1.23457e-300</td>", "<td>0.3</td>"):
        assert shown in body
