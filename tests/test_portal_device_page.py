"""The device page and what hangs off it: chart, series, live refresh, commands, alerts, CSV."""

import csv
import io
import json
import re
import sys
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connections
from django.http import StreamingHttpResponse

from portal.charts import chart_svg
from portal.views.export import CHUNK_ROWS
from shards.alerts import raise_alert
from shards.analysis.rollups import roll_up_shard
from shards.models import Alert, Command, DeviceFence, LatestValue, Reading
from shards.series import MAX_POINTS, Bucket, Series, bucket_width, device_series
from tests import test_portal_support as support
from tests.factories import T0, mark_for_rollup
from tests.querylog import queries_by_alias
from tests.test_portal_support import add_readings, login, parse_html

world = support.world
JSON = {"HTTP_ACCEPT": "application/json"}


def test_the_page_has_everything_the_browser_tests_look_for(world):
    device = world["a1"].device
    alert, _ = raise_alert(device.pk, "max:temp", "too hot")
    page = parse_html(login(world["x"]).get(f"/devices/{device.pk}/").content)
    chart = page.one(id="live-chart")
    assert chart.find_all("svg")
    newest = Reading.objects.for_device(device).order_by("-ts").first().ts
    assert datetime.fromisoformat(chart.attrs["data-latest-ts"]) == newest
    polylines = chart.find_all("polyline")
    assert int(chart.attrs["data-points"]) == sum(len(p.attrs["points"].split()) for p in polylines)
    options = [o.attrs["value"] for o in page.one("select", id="range").find_all("option")]
    assert options == ["1h", "6h", "24h", "7d", "30d"]
    form = page.one("form", id="command-form")
    assert form.attrs["method"] == "post"
    assert form.find_all("input", name="name") and form.find_all("textarea", name="args")
    assert form.one("button").text.strip() == "Send"
    assert page.one("table", id="commands")
    entry = page.one(id="alerts").one(data_alert_id=str(alert.pk))
    assert entry.one(class_="state").text.strip() == "open"
    assert entry.one("form", class_="ack").one("button")
    export = page.one("a", id="export-csv").attrs["href"]
    assert export == f"/devices/{device.pk}/export.csv?range=1h"
    latest = page.one(id="latest-values")
    assert latest.one("dd", data_metric="temp").text.strip() == "59"
    assert latest.one(class_="status").text.strip() == "online"


def direct_aggregate(device_id: int, start: datetime, end: datetime, width: timedelta):
    """The same numbers by other SQL: buckets from epoch arithmetic instead of date_bin."""
    seconds = width.total_seconds()
    with connections["shard_1"].cursor() as cursor:
        cursor.execute(
            """
            SELECT metric, to_timestamp(floor(extract(epoch FROM ts) / %s) * %s) AS bucket,
                   min(value), max(value), avg(value), count(*)
              FROM shards_reading WHERE device_id = %s AND ts >= %s AND ts < %s
             GROUP BY 1, 2 ORDER BY 1, 2
            """,
            [seconds, seconds, device_id, start, end],
        )
        return cursor.fetchall()


def test_the_series_equals_a_direct_sql_aggregate(world):
    device = world["a1"].device
    add_readings(device.pk, T0, 6 * 3600, step=timedelta(seconds=3))  # 18 h of readings
    start, end = T0 + timedelta(hours=2, seconds=7), T0 + timedelta(hours=14)
    newest = max(Reading.objects.for_device(device).filter(ts__lt=end).values_list("ts", flat=True))
    # From raw readings (nothing rolled up yet), then from rollups with ragged raw edges.
    for rolled_up in (False, True):
        if rolled_up:
            assert roll_up_shard("shard_1").changed
        series = device_series(device, start, end)
        assert 200 <= len(series.metrics["temp"]) <= MAX_POINTS
        ours = [
            (metric, b.start, b.min, b.max, pytest.approx(b.mean), b.count)
            for metric, buckets in sorted(series.metrics.items())
            for b in buckets
        ]
        assert ours == direct_aggregate(device.pk, start, end, series.width)
        assert series.latest_ts == newest


@pytest.mark.parametrize(
    "span",
    [
        timedelta(hours=1),
        timedelta(hours=6),
        timedelta(hours=24),
        timedelta(days=7),
        timedelta(days=30),
        timedelta(days=92),
    ],
)
def test_every_range_comes_back_as_200_to_400_buckets(span):
    assert 200 <= span / bucket_width(T0, T0 + span) <= MAX_POINTS


def test_a_month_of_readings_is_drawn_from_buckets(world):
    device = world["a1"].device
    now = world["now"]
    add_readings(device.pk, now - timedelta(days=30), 30 * 24 * 12, step=timedelta(minutes=5))
    client = login(world["x"])
    page = parse_html(client.get(f"/devices/{device.pk}/?range=30d").content)
    points = int(page.one(id="live-chart").attrs["data-points"])
    assert 2 * 200 <= points <= 2 * MAX_POINTS  # two metrics, not 17,000 readings
    svg = client.get(f"/devices/{device.pk}/chart.svg?range=30d")
    assert svg["Content-Type"] == "image/svg+xml" and svg.content.startswith(b"<svg")


def test_live_sends_the_chart_only_when_there_is_something_newer(world):
    device = world["a1"].device
    client = login(world["x"])
    url = f"/devices/{device.pk}/live?range=1h"
    first = client.get(url).json()
    assert first["chart_svg"].startswith("<svg") and first["points"] > 0
    unchanged = client.get(url, {"since": first["latest_ts"]}).json()
    assert unchanged["chart_svg"] is None
    assert 'data-metric="temp"' in unchanged["latest_html"]
    newer = datetime.fromisoformat(first["latest_ts"]) + timedelta(seconds=20)
    add_readings(device.pk, newer, 1)  # moves the latest values on, as the import does
    fresh = client.get(url, {"since": first["latest_ts"]}).json()
    assert datetime.fromisoformat(fresh["latest_ts"]) == newer
    assert fresh["chart_svg"].startswith("<svg")


def test_bad_ranges_are_400_with_a_message(world):
    client = login(world["x"])
    base = f"/devices/{world['a1'].device.pk}"
    for path, words in [
        (f"{base}/export.csv?start=yesterday&end=2026-01-02", "start must be an ISO 8601"),
        (f"{base}/export.csv?start=2026-01-02&end=2026-01-01", "start must be before end"),
        (f"{base}/export.csv?start=2026-01-02", "give both start and end"),
        (f"{base}/export.csv?start=2025-01-01&end=2026-01-01", "at most 92 days"),
        (f"{base}/chart.svg?range=2y", "range must be one of"),
        (f"{base}/?range=2y", "range must be one of"),
    ]:
        answer = client.get(path)
        assert answer.status_code == 400, path
        assert words in answer.content.decode(), (path, answer.content)


def test_csv_export_streams_exactly_the_range(world):
    device = world["a1"].device
    add_readings(device.pk, T0, 5000)
    client = login(world["x"])
    answer = client.get(
        f"/devices/{device.pk}/export.csv",
        {"start": "2026-01-01T00:00:10Z", "end": "2026-01-01T01:00:00+00:00"},
    )
    assert answer.status_code == 200
    assert isinstance(answer, StreamingHttpResponse) and answer.streaming
    assert answer["Content-Type"].startswith("text/csv")
    assert "attachment" in answer["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(b"".join(answer.streaming_content).decode())))
    assert rows[0] == ["ts", "metric", "value"]
    expected = (
        Reading.objects.for_device(device)
        .filter(ts__gte=T0 + timedelta(seconds=10), ts__lt=T0 + timedelta(hours=1))
        .order_by("ts", "metric")
        .values_list("ts", "metric", "value")
    )
    assert len(rows) - 1 == 2 * 3590 == len(expected)
    parsed = [(datetime.fromisoformat(ts), metric, float(value)) for ts, metric, value in rows[1:]]
    assert parsed == list(expected)
    assert parsed[0][0] == datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)


def test_csv_export_reads_in_pages_of_bounded_size(world):
    """No cursor outlives its transaction behind the pooler, and memory stays bounded:
    every read of readings is a query of its own with a LIMIT of one page."""
    device = world["a1"].device
    add_readings(device.pk, T0, 2500)  # 5000 rows: two metrics a second
    client = login(world["x"])
    with queries_by_alias() as log:
        answer = client.get(f"/devices/{device.pk}/export.csv", {"start": T0.isoformat(),
                            "end": (T0 + timedelta(hours=1)).isoformat()})  # fmt: skip
        body = b"".join(answer.streaming_content).decode()
    assert len(body.splitlines()) == 1 + 5000
    pages = [sql for sqls in log.values() for sql in sqls if '"shards_reading"' in sql]
    assert len(pages) == 3, pages  # 2000 + 2000 + 1000
    assert all(f"LIMIT {CHUNK_ROWS}" in sql for sql in pages), pages


def test_a_sent_command_is_queued_and_listed(world):
    device = world["a2"].device
    client = login(world["x"])
    answer = client.post(
        f"/devices/{device.pk}/commands", {"name": "reboot", "args": '{"delay": 5}'}, **JSON
    )
    assert answer.status_code == 201, answer.content
    command = Command.objects.for_device(device).get(pk=answer.json()["id"])
    assert (command.status, command.args, command.created_by_id) == (
        "queued",
        {"delay": 5},
        world["x"].pk,
    )
    # Without the script: a plain post is redirected back to the page.
    plain = client.post(f"/devices/{device.pk}/commands", {"name": "ping"})
    assert plain.status_code == 302 and plain["Location"] == f"/devices/{device.pk}/"
    page = parse_html(client.get(f"/devices/{device.pk}/").content)
    row = page.one("table", id="commands").one("tr", data_command_id=str(command.pk))
    assert row.one("td", class_="status").text.strip() == "queued"
    live = client.get(f"/devices/{device.pk}/live?range=1h").json()
    assert f'data-command-id="{command.pk}"' in live["commands_html"]


@pytest.mark.parametrize(
    "args, message",
    [
        ('{"delay": 5', "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"x": NaN}', "not valid JSON"),
        ('{"x": "\\u0000"}', "NUL"),
    ],
)
def test_bad_command_arguments_are_explained_and_nothing_is_created(world, args, message):
    device = world["a1"].device
    client = login(world["x"])
    scripted = client.post(
        f"/devices/{device.pk}/commands", {"name": "reboot", "args": args}, **JSON
    )
    assert scripted.status_code == 400
    assert message in json.dumps(scripted.json()["errors"]["args"])
    plain = client.post(f"/devices/{device.pk}/commands", {"name": "reboot", "args": args})
    assert plain.status_code == 400
    shown = parse_html(plain.content).one(id="command-error")
    assert message in shown.text and "hidden" not in shown.attrs
    assert Command.objects.for_device(device).count() == 0


def test_a_command_for_a_device_held_by_a_move_is_503_not_500(world, settings):
    """A mover keeps the device fenced past FENCE_WAIT_SECONDS: try again later."""
    settings.FENCE_WAIT_SECONDS = 0.1
    device = world["a1"].device
    DeviceFence.objects.for_device(device).filter(device_id=device.pk).update(
        state=DeviceFence.State.FENCED
    )
    answer = login(world["x"]).post(f"/devices/{device.pk}/commands", {"name": "reboot"})
    assert answer.status_code == 503 and answer["Retry-After"]
    # Read past the fence (reads of a fenced device wait, as writes do).
    assert not Command.objects.on_shard("shard_1").filter(device_id=device.pk).exists()


def test_a_bad_command_name_is_400(world):
    device = world["a1"].device
    answer = login(world["x"]).post(
        f"/devices/{device.pk}/commands", {"name": "no spaces!"}, **JSON
    )
    assert answer.status_code == 400 and "name" in answer.json()["errors"]
    assert Command.objects.for_device(device).count() == 0


def test_acknowledging_an_alert(world):
    device = world["a1"].device
    alert, _ = raise_alert(device.pk, "max:temp", "too hot", value=99.0)
    client = login(world["x"])
    answer = client.post(f"/devices/{device.pk}/alerts/{alert.pk}/ack", **JSON)
    assert answer.status_code == 200 and answer.json()["state"] == "acknowledged"
    stored = Alert.objects.for_device(device).get(pk=alert.pk)
    assert (stored.state, stored.acknowledged_by_id) == ("acknowledged", world["x"].pk)
    entry = parse_html(client.get(f"/devices/{device.pk}/").content).one(
        data_alert_id=str(alert.pk)
    )
    assert entry.one(class_="state").text.strip() == "acknowledged"
    assert entry.find_all("form", class_="ack") == []


HUGE = 1.7e308
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?")


def drawn_numbers(svg: str) -> list[float]:
    """Every number in the chart's coordinates: must be finite and on the canvas."""
    chart = parse_html(svg)
    found = []
    for tag in ("polyline", "polygon", "line", "text", "circle", "rect"):
        for element in chart.find_all(tag):
            for name in ("points", "x", "y", "x1", "x2", "y1", "y2", "cx", "cy"):
                found += [float(n) for n in NUMBER.findall(element.attrs.get(name, ""))]
    return found


def tick_labels(svg: str) -> list[str]:
    return [t.text for t in parse_html(svg).find_all("text", class_="tick")]


@pytest.mark.parametrize("range_", ["1h", "24h"])  # buckets from raw readings; from rollups
def test_huge_readings_of_both_signs_are_drawn_and_shown_readably(world, range_):
    device = world["a1"].device
    at = world["now"] - timedelta(minutes=30, seconds=30)
    Reading.objects.for_device(device).bulk_create(
        Reading(device_id=device.pk, metric="temp", ts=at + timedelta(seconds=s), value=v)
        for s, v in [(1, HUGE), (2, HUGE), (3, -HUGE), (62, HUGE), (63, HUGE)]
    )
    mark_for_rollup(device.pk)
    LatestValue.objects.for_device(device).filter(device_id=device.pk, metric="temp").update(
        value=HUGE
    )
    roll_up_shard("shard_1")
    client = login(world["x"])

    page = client.get(f"/devices/{device.pk}/", {"range": range_})
    svg = client.get(f"/devices/{device.pk}/chart.svg", {"range": range_})
    live = client.get(f"/devices/{device.pk}/live", {"range": range_})

    assert (page.status_code, svg.status_code, live.status_code) == (200, 200, 200)
    shown = parse_html(page.content).one("dd", data_metric="temp").text.strip()
    assert shown == "1.7e+308"
    body = json.loads(live.content, parse_constant=lambda name: pytest.fail(name))
    for drawing in (svg.content.decode(), body["chart_svg"]):
        numbers = drawn_numbers(drawing)
        assert numbers and all(-10 <= n <= 2000 for n in numbers)
        assert "nan" not in drawing and "inf" not in drawing
        labels = tick_labels(drawing)
        assert labels and max(len(label) for label in labels) <= 12, labels
    assert {"-1.8e+308", "0", "1.8e+308"} <= set(tick_labels(svg.content.decode()))


def test_a_flat_series_of_the_largest_float_is_drawn():
    start = datetime(2026, 1, 1, tzinfo=UTC)
    top = sys.float_info.max
    series = Series(start=start, end=start + timedelta(hours=1), width=timedelta(seconds=10))
    series.metrics["temp"] = [
        Bucket(start + timedelta(minutes=m), top, top, top, 1) for m in (1, 2)
    ]
    series.metrics["rpm"] = [Bucket(start, -top, top, 0.0, 2)]
    drawing = str(chart_svg(series))
    numbers = drawn_numbers(drawing)
    assert numbers and all(-10 <= n <= 2000 for n in numbers)
    assert max(len(label) for label in tick_labels(drawing)) <= 12
