"""The central admin reads every balancer's HAProxy stats page (central_admin/haproxy_status.py).

No cluster needed: a small HTTP server on this machine answers like HAProxy's stats
page (CSV behind basic auth); a closed port stands for a dead balancer.
"""

import base64
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.template.loader import render_to_string
from django.test import override_settings

from central_admin.haproxy_status import read_all_haproxy, read_haproxy, stats_addresses

USER, PASSWORD = "ops", "pw"
CLOSED = "127.0.0.1:1"
FIELDS = (
    "pxname,svname,iid,scur,hrsp_5xx,status,check_status,last_chk,lastchg,downtime,chkdown,addr"
)


def stats_csv(servers: list[tuple[str, str]]) -> str:
    rows = [f"# {FIELDS},"]
    rows.append("app_nodes,BACKEND,3,0,0,UP,,,5,0,0,,")
    for name, status in servers:
        rows.append(f"app_nodes,{name},3,1,0,{status},L7OK,200,5,0,0,10.0.0.21:8001,")
    return "\n".join(rows) + "\n"


class FakeStats:
    """A stats page at 127.0.0.1:<port> listing `servers`, for USER/PASSWORD only."""

    def __init__(self, servers: list[tuple[str, str]]):
        body = stats_csv(servers).encode()
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="HAProxy Statistics"')
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/csv")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def balancers() -> Iterator[tuple[FakeStats, FakeStats]]:
    first = FakeStats([("app1", "UP"), ("app2", "DOWN")])
    second = FakeStats([("app1", "UP"), ("app2", "UP"), ("app3", "UP")])
    try:
        with override_settings(HAPROXY_STATS_USER=USER, HAPROXY_STATS_PASSWORD=PASSWORD):
            yield first, second
    finally:
        first.close()
        second.close()


def test_every_balancer_is_read_in_the_settings_order(balancers):
    first, second = balancers
    with override_settings(HAPROXY_STATS_ADDRESSES=[second.address, CLOSED, first.address]):
        statuses = read_all_haproxy()
    assert [s.address for s in statuses] == [second.address, CLOSED, first.address]
    assert [(s.name, s.status) for s in statuses[0].servers] == [
        ("app1", "UP"), ("app2", "UP"), ("app3", "UP"),
    ]  # fmt: skip
    assert statuses[0].error == "" and statuses[2].error == ""
    assert [(s.name, s.status) for s in statuses[2].servers] == [("app1", "UP"), ("app2", "DOWN")]
    # The dead balancer is an error of its own, not an exception for the others.
    assert statuses[1].servers == [] and statuses[1].error.startswith("unreachable")


def test_a_single_address_is_the_fallback(balancers):
    first, _ = balancers
    with override_settings(HAPROXY_STATS_ADDRESSES=[], HAPROXY_STATS_ADDRESS=first.address):
        assert stats_addresses() == [first.address]
        statuses = read_all_haproxy()
        assert read_haproxy().address == first.address
    assert len(statuses) == 1 and [s.name for s in statuses[0].servers] == ["app1", "app2"]


def test_a_wrong_login_is_unreachable_not_a_crash(balancers):
    first, _ = balancers
    with override_settings(HAPROXY_STATS_ADDRESSES=[first.address], HAPROXY_STATS_PASSWORD="no"):
        (status,) = read_all_haproxy()
    assert status.servers == [] and status.error.startswith("unreachable")


def test_the_page_shows_one_section_per_balancer(balancers):
    first, second = balancers
    with override_settings(HAPROXY_STATS_ADDRESSES=[first.address, CLOSED, second.address]):
        statuses = read_all_haproxy()
    # The cluster page's own template, without the admin around it (no database here).
    html = render_to_string(
        "central_admin/cluster.html", {"balancers": statuses, "queue": None, "workers": None}
    )
    sections = html.split('<section class="fleet-panel fleet-wide haproxy"')[1:]
    assert len(sections) == 3
    assert f'data-balancer="{first.address}"' in sections[0]
    assert sections[0].count("<tr data-server=") == 2 and "haproxy-error" not in sections[0]
    assert f'data-balancer="{CLOSED}"' in sections[1]
    assert "HAProxy stats unreachable" in sections[1] and "<tr data-server=" not in sections[1]
    assert f'data-balancer="{second.address}"' in sections[2]
    assert sections[2].count("<tr data-server=") == 3
