"""Portal access control: anonymous users, other users' devices, command rights, CSRF."""

import pytest
from django.test import Client

from core.models import DeviceAccess
from shards.alerts import raise_alert
from shards.models import Alert, Command
from tests import test_portal_support as support
from tests.factories import make_user
from tests.test_portal_support import login, parse_html

world = support.world


def device_urls(device_id: int, alert_id: int) -> list[tuple[str, str, dict]]:
    """Every portal URL of one device, with the method and a body that would be accepted."""
    return [
        ("get", f"/devices/{device_id}/", {}),
        ("get", f"/devices/{device_id}/chart.svg?range=1h", {}),
        ("get", f"/devices/{device_id}/live?range=1h", {}),
        ("get", f"/devices/{device_id}/export.csv?range=24h", {}),
        ("post", f"/devices/{device_id}/commands", {"name": "reboot"}),
        ("post", f"/devices/{device_id}/alerts/{alert_id}/ack", {}),
    ]


def call(client: Client, method: str, path: str, body: dict):
    return client.post(path, body) if method == "post" else client.get(path)


def test_anonymous_is_sent_to_login_everywhere(world):
    device = world["a1"].device
    alert, _ = raise_alert(device.pk, "max:temp", "too hot")
    client = Client()
    for method, path, body in [("get", "/devices/", {}), *device_urls(device.pk, alert.pk)]:
        answer = call(client, method, path, body)
        assert answer.status_code == 302, path
        assert answer["Location"].startswith("/accounts/login/?next="), path
    assert Command.objects.for_device(device).count() == 0
    assert Alert.objects.for_device(device).get().state == "open"


def test_another_users_device_is_404_everywhere_and_nothing_changes(world):
    theirs = world["b1"].device
    alert, _ = raise_alert(theirs.pk, "max:temp", "their secret alert")
    client = login(world["x"])
    for method, path, body in device_urls(theirs.pk, alert.pk):
        answer = call(client, method, path, body)
        assert answer.status_code == 404, path
        assert b"Their pump" not in answer.content and b"secret" not in answer.content
    assert Command.objects.for_device(theirs).count() == 0
    assert Alert.objects.for_device(theirs).get().state == "open"
    listed = parse_html(client.get("/devices/").content).find_all(
        "tr", data_device_id=str(theirs.pk)
    )
    assert listed == []


def test_a_device_that_does_not_exist_is_404(world):
    client = login(world["x"])
    for method, path, body in device_urls(999_999, 1):
        assert call(client, method, path, body).status_code == 404, path


# a2 shares shard_2 with b1: a lookup missing its device filter would find the alert there.
@pytest.mark.parametrize("mine", ["a1", "a2"], ids=["other-shard", "same-shard"])
def test_an_alert_of_another_device_is_404_even_via_my_device(world, mine):
    """The alert id must belong to the device in the URL, not just to some device."""
    theirs, _ = raise_alert(world["b1"].device.pk, "max:temp", "theirs")
    answer = login(world["x"]).post(f"/devices/{world[mine].device.pk}/alerts/{theirs.pk}/ack")
    assert answer.status_code == 404
    assert Alert.objects.for_device(world["b1"].device).get().state == "open"


def test_staff_see_every_device_and_its_chart(world):
    client = login(world["staff"])
    theirs = world["b1"].device.pk
    assert client.get(f"/devices/{theirs}/").status_code == 200
    chart = client.get(f"/devices/{theirs}/chart.svg?range=24h")
    assert chart.status_code == 200 and chart["Content-Type"] == "image/svg+xml"
    listed = parse_html(client.get("/devices/").content).find_all("tr", data_device_id=str(theirs))
    assert len(listed) == 1


def test_staff_without_permissions_are_404_everywhere_and_change_nothing(world):
    theirs = world["b1"].device
    alert, _ = raise_alert(theirs.pk, "max:temp", "their secret alert")
    client = login(make_user("bare", is_staff=True))
    for method, path, body in device_urls(theirs.pk, alert.pk):
        answer = call(client, method, path, body)
        assert answer.status_code == 404, path
    assert Command.objects.for_device(theirs).count() == 0
    assert Alert.objects.for_device(theirs).get().state == "open"
    assert parse_html(client.get("/devices/").content).find_all("tr", data_device_id=True) == []


def test_the_view_permission_shows_every_device_but_commands_none(world):
    theirs = world["b1"].device
    client = login(make_user("viewer", "core.view_device"))
    assert client.get(f"/devices/{theirs.pk}/").status_code == 200
    assert client.get(f"/devices/{theirs.pk}/export.csv?range=24h").status_code == 200
    assert client.post(f"/devices/{theirs.pk}/commands", {"name": "reboot"}).status_code == 403
    assert Command.objects.for_device(theirs).count() == 0
    page = parse_html(client.get(f"/devices/{theirs.pk}/").content)
    assert page.find_all("form", id="command-form") == []


def test_watching_without_the_right_to_command_is_403_and_hides_the_form(world):
    device = world["a1"].device
    DeviceAccess.objects.filter(user=world["x"], device=device).update(can_command=False)
    client = login(world["x"])
    answer = client.post(f"/devices/{device.pk}/commands", {"name": "reboot"})
    assert answer.status_code == 403
    assert Command.objects.for_device(device).count() == 0
    page = parse_html(client.get(f"/devices/{device.pk}/").content)
    assert page.find_all("form", id="command-form") == []


def test_posts_without_a_csrf_token_are_refused(world):
    device = world["a1"].device
    alert, _ = raise_alert(device.pk, "max:temp", "too hot")
    client = login(world["x"], enforce_csrf_checks=True)
    assert client.post(f"/devices/{device.pk}/commands", {"name": "reboot"}).status_code == 403
    assert client.post(f"/devices/{device.pk}/alerts/{alert.pk}/ack").status_code == 403
    assert Command.objects.for_device(device).count() == 0
    assert Alert.objects.for_device(device).get().state == "open"


def test_the_pages_forms_carry_a_token_that_is_accepted(world):
    device = world["a1"].device
    alert, _ = raise_alert(device.pk, "max:temp", "too hot")
    client = login(world["x"], enforce_csrf_checks=True)
    page = parse_html(client.get(f"/devices/{device.pk}/").content)
    forms = [f for f in page.find_all("form") if f.attrs.get("method") == "post"]
    assert {f.attrs.get("id") or f.attrs.get("class") for f in forms} >= {"command-form", "ack"}
    for form in forms:
        tokens = form.find_all("input", name="csrfmiddlewaretoken")
        assert len(tokens) == 1 and tokens[0].attrs["value"], form.attrs
    token = forms[0].find_all("input", name="csrfmiddlewaretoken")[0].attrs["value"]
    sent = client.post(
        f"/devices/{device.pk}/commands", {"name": "reboot", "csrfmiddlewaretoken": token}
    )
    assert sent.status_code == 302
    acked = client.post(
        f"/devices/{device.pk}/alerts/{alert.pk}/ack", {"csrfmiddlewaretoken": token}
    )
    assert acked.status_code == 302
    assert Command.objects.for_device(device).get().status == "queued"
    assert Alert.objects.for_device(device).get().state == "acknowledged"


@pytest.mark.parametrize("path", ["/devices/", "/accounts/login/"])
def test_the_logout_button_posts_with_a_token(world, path):
    page = parse_html(login(world["x"]).get(path).content)
    logout = page.one("form", class_="logout")
    assert logout.attrs["method"] == "post" and logout.attrs["action"] == "/accounts/logout/"
    assert logout.find_all("input", name="csrfmiddlewaretoken")
    assert logout.find_all("button", type="submit")
