"""Shared pieces of the portal tests: a small world of users and devices, an HTML reader,
and a query log that also sees the fan-out threads (tests.querylog sees only this one).

Named test_portal_* only because the portal owns those files; it holds no tests.
"""

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from html.parser import HTMLParser

import pytest
from django.db import connections
from django.db.backends.signals import connection_created
from django.test import Client
from django.utils import timezone

from core.models import User
from shards.models import DeviceStatus, LatestValue, Reading
from tests.factories import make_device, make_user, mark_for_rollup
from tests.querylog import QueryLog


@pytest.fixture
def world(shards):
    """Users X and Y, staff S; X owns a1 (shard_1, online) and a2 (shard_2, offline);
    Y owns b1 (shard_2). Every device has an hour of readings ending a minute ago."""
    x = User.objects.create_user("x", password="pw-x")
    y = User.objects.create_user("y", password="pw-y")
    # Operators see and command every device by permission; staff alone grants nothing.
    staff = make_user("s", "core.view_device", "core.command_device", is_staff=True)
    a1 = make_device(shard="shard_1", users=[x], name="Pump A1")
    a2 = make_device(shard="shard_2", users=[x])
    b1 = make_device(shard="shard_2", users=[y], name="Their pump")
    now = timezone.now().replace(microsecond=0)
    for device in (a1.device, a2.device, b1.device):
        add_readings(device.pk, now - timedelta(hours=1), 60, step=timedelta(minutes=1))
    DeviceStatus.objects.for_device(a1.device).create(device_id=a1.device.pk, last_seen_at=now)
    DeviceStatus.objects.for_device(a2.device).create(
        device_id=a2.device.pk, last_seen_at=now - timedelta(days=1)
    )
    return {"x": x, "y": y, "staff": staff, "a1": a1, "a2": a2, "b1": b1, "now": now}


def add_readings(device_id: int, start, count: int, step=timedelta(seconds=1)) -> None:
    """`count` readings of temp (i) and humidity (100 - i), the latest values, rollup marks."""
    rows = []
    for i in range(count):
        ts = start + step * i
        rows.append(Reading(device_id=device_id, metric="temp", ts=ts, value=float(i)))
        rows.append(Reading(device_id=device_id, metric="humidity", ts=ts, value=100.0 - i))
    Reading.objects.for_device(device_id).bulk_create(rows, batch_size=5000, ignore_conflicts=True)
    mark_for_rollup(device_id)
    last = start + step * (count - 1)
    for metric, value in (("temp", count - 1.0), ("humidity", 101.0 - count)):
        LatestValue.objects.for_device(device_id).update_or_create(
            device_id=device_id, metric=metric, defaults={"ts": last, "value": value}
        )


def login(user: User, **kwargs) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


@contextmanager
def queries_in_every_thread() -> Iterator[QueryLog]:
    """Record SQL per alias in this thread and in every connection opened meanwhile.

    Fan-out threads open connections of their own, so a wrapper is added to each
    new connection as it is created.
    """
    log = QueryLog(defaultdict(list))

    def recorder(alias: str):
        def wrapper(execute, sql, params, many, context):
            log.setdefault(alias, []).append(sql)
            return execute(sql, params, many, context)

        return wrapper

    def on_connect(sender, connection, **kwargs):
        connection.execute_wrappers.append(recorder(connection.alias))

    wrapped = []
    for alias in list(connections.settings):
        wrapper = recorder(alias)
        connections[alias].execute_wrappers.append(wrapper)
        wrapped.append((alias, wrapper))
    connection_created.connect(on_connect, weak=False)
    try:
        yield log
    finally:
        connection_created.disconnect(on_connect)
        for alias, wrapper in wrapped:
            connections[alias].execute_wrappers.remove(wrapper)


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list["Element | str"] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def find_all(self, tag: str | None = None, **attrs: str) -> list["Element"]:
        """Descendants with this tag and these attribute values (class_ matches one class)."""
        found = []
        for child in self.children:
            if isinstance(child, str):
                continue
            if (tag is None or child.tag == tag) and all(
                value in child.attrs.get("class", "").split()
                if name == "class_"
                else child.attrs.get(name.replace("_", "-")) == value
                for name, value in attrs.items()
            ):
                found.append(child)
            found.extend(child.find_all(tag, **attrs))
        return found

    def one(self, tag: str | None = None, **attrs: str) -> "Element":
        found = self.find_all(tag, **attrs)
        assert len(found) == 1, f"expected one {tag} {attrs}, found {len(found)}"
        return found[0]


VOID = {
    "input",
    "br",
    "meta",
    "link",
    "img",
    "hr",
    "circle",
    "rect",
    "line",
    "polyline",
    "polygon",
    "path",
}


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.root = Element("root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        element = Element(tag, {name: value or "" for name, value in attrs})
        self.stack[-1].children.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Element(tag, {name: value or "" for name, value in attrs}))

    def handle_endtag(self, tag):
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse_html(content: bytes | str) -> Element:
    builder = _TreeBuilder()
    builder.feed(content.decode() if isinstance(content, bytes) else content)
    return builder.root
