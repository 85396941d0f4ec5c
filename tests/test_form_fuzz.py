"""Fuzzing the portal's and the admin's forms and query strings, and every header a client
sends: whatever arrives, the answer is below 500, and a refused form writes nothing.

The JSON API has its own schema-driven fuzzing (test_api_fuzz); the pages have no
schema, so each form and query string here is named with its fields, and Hypothesis
fills them with any text (NUL, lookalike digits, deep JSON, huge numbers included).
"""

import os

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.models import Device, MoveJob, Shard, User
from shards.models import Command
from tests.factories import make_device

EXAMPLES = int(os.environ.get("FORM_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
# Text a browser could send (no lone surrogates: they cannot be encoded), and the
# inputs that broke things before, mixed in on purpose.
NASTY = st.sampled_from(
    [
        "\x00",
        "1\x00",
        "\xb2",
        "\u0661\u0662",
        "1e309",
        "-1.7e308",
        "NaN",
        '{"a": ' * 3000 + "1" + "}" * 3000,
        "[" * 5000,
        "x" * 70_000,
        "' OR 1=1 --",
        "%00",
        "../../etc/passwd",
        "9" * 40,
    ]
)
TEXT = st.one_of(NASTY, st.text(st.characters(exclude_categories=("Cs",)), max_size=200))
# Header values reach WSGI as latin-1 text: anything else cannot arrive over HTTP.
HEADER = st.one_of(
    NASTY.filter(lambda text: text.isascii() or max(map(ord, text)) < 256),
    st.text(st.characters(max_codepoint=255), max_size=200),
)


@pytest.fixture(scope="module")
def fuzz_world(django_db_setup, django_db_blocker):
    from shards.registration import register_shard
    from tests.conftest import TEST_SHARDS, location_of, truncate_all

    with django_db_blocker.unblock():
        for alias in TEST_SHARDS:
            register_shard(alias, location_of(alias), migrate=False)
        root = User.objects.create_superuser("fuzz-root", password="pw")
        device = make_device(shard="shard_1", users=[root])
        yield {"root": root, "device": device}
        truncate_all(["default", *TEST_SHARDS])


@pytest.fixture
def world(fuzz_world, django_db_blocker, settings):
    settings.DEVICE_RATE_LIMIT = settings.ENROLL_FAILURE_LIMIT = "off"
    settings.DEVICE_AUTH_FAILURE_LIMIT = "off"
    settings.LOGIN_CLIENT_FAILURE_LIMIT = "off"
    with django_db_blocker.unblock():
        client = Client()
        client.force_login(fuzz_world["root"])
        yield {**fuzz_world, "client": client, "pk": fuzz_world["device"].device.pk}


def below_500(answer, what: str) -> None:
    assert answer.status_code < 500, (what, answer.status_code, answer.content[:300])


@given(name=TEXT, args=TEXT, expires_in=TEXT)
@FUZZ
def test_the_command_forms(world, name, args, expires_in):
    pk, client = world["pk"], world["client"]
    before = Command.objects.for_device(pk).count()
    data = {"name": name, "args": args, "expires_in": expires_in}
    portal = client.post(f"/devices/{pk}/commands", data, HTTP_ACCEPT="application/json")
    below_500(portal, "portal command form")
    below_500(client.post(f"/admin/core/device/{pk}/commands/", data), "admin command form")
    created = Command.objects.for_device(pk).count() - before
    assert created <= 2
    if portal.status_code != 201:
        assert created <= 1  # only the admin's, if it was valid there


@given(range_=TEXT, start=TEXT, end=TEXT)
@FUZZ
def test_the_portal_query_strings(world, range_, start, end):
    pk, client = world["pk"], world["client"]
    query = {"range": range_, "start": start, "end": end}
    for path in (f"/devices/{pk}/", f"/devices/{pk}/chart.svg", f"/devices/{pk}/live"):
        below_500(client.get(path, query), path)
    below_500(client.get(f"/devices/{pk}/export.csv", query), "export")
    below_500(client.get("/devices/", {"page": range_, "q": start}), "device list")


@given(q=TEXT, shard=TEXT, online=TEXT, owner=TEXT, active=TEXT, order=TEXT, page=TEXT)
@FUZZ
def test_the_admin_device_list(world, q, shard, online, owner, active, order, page):
    query = {"q": q, "shard": shard, "online": online, "owner": owner}
    query |= {"is_active__exact": active, "o": order, "p": page}
    below_500(world["client"].get("/admin/core/device/", query), "device list")
    below_500(world["client"].get("/admin/core/user/", {"q": q, "o": order}), "user list")


@given(target=TEXT, weight=TEXT, cost=TEXT, include=TEXT)
@FUZZ
def test_the_admin_shard_and_move_forms(world, target, weight, cost, include):
    pk, client = world["pk"], world["client"]
    below_500(client.post(f"/admin/core/device/{pk}/move/", {"target": target}), "move")
    assert not MoveJob.objects.exclude(target_id__in=["shard_1", "shard_2"]).exists()
    MoveJob.objects.all().delete()
    below_500(client.post("/admin/core/shard/shard_2/weight/", {"weight": weight}), "weight")
    below_500(client.get(f"/admin/core/shard/{target}/change/"), "shard page")
    drain = {"cost": cost, "include_pinned": include}
    below_500(client.post(f"/admin/core/shard/{target}/drain/", drain), "drain")
    Shard.objects.update(state=Shard.State.ACTIVE, weight=100)


@given(serial=TEXT, name=TEXT, interval=TEXT, retention=TEXT)
@FUZZ
def test_the_admin_device_change_form(world, serial, name, interval, retention):
    pk = world["pk"]
    data = {
        "serial": serial,
        "name": name,
        "is_active": "on",
        "report_interval_s": interval,
        "raw_retention_days": retention,
        "deviceaccess_set-TOTAL_FORMS": "0",
        "deviceaccess_set-INITIAL_FORMS": "0",
        "alert_rules-TOTAL_FORMS": "1",
        "alert_rules-INITIAL_FORMS": "0",
        "alert_rules-0-metric": name,
        "alert_rules-0-kind": serial,
        "alert_rules-0-threshold": interval,
    }
    below_500(world["client"].post(f"/admin/core/device/{pk}/change/", data), "device form")
    Device.objects.filter(pk=pk).update(serial=world["device"].device.serial, is_active=True)


@given(
    authorization=HEADER,
    cookie=HEADER,
    forwarded=HEADER,
    content_type=HEADER,
    accept=HEADER,
    csrf=HEADER,
    length=HEADER,
)
@FUZZ
def test_header_values(world, authorization, cookie, forwarded, content_type, accept, csrf, length):
    headers = {
        "HTTP_AUTHORIZATION": authorization,
        "HTTP_COOKIE": cookie,
        "HTTP_X_FORWARDED_FOR": forwarded,
        "HTTP_ACCEPT": accept,
        "HTTP_X_CSRFTOKEN": csrf,
    }
    body = '{"batch_id": "b", "readings": [{"ts": 1, "metric": "t", "value": 1}]}'
    anonymous = Client()
    for path in ("/api/v1/device/uploads", "/api/v1/device/enroll"):
        below_500(anonymous.post(path, body, content_type=content_type, **headers), path)
    for path in ("/api/v1/device/commands", "/api/v1/devices", "/devices/", "/readyz"):
        below_500(anonymous.get(path, **headers), path)
    login = {"username": "fuzz-root", "password": "wrong"}
    below_500(anonymous.post("/accounts/login/", login, **headers), "login")
    below_500(world["client"].get("/admin/", **headers), "admin")
    sized = anonymous.post(
        "/api/v1/device/uploads", body, content_type="application/json", CONTENT_LENGTH=length
    )
    below_500(sized, "content length")
