"""The local cluster's rendered configs: uWSGI nodes, HAProxy in front of them, the simulator,
and how `add-shard` picks an extra shard's alias and port.

The renderers and the choice are pure, so these tests need no running cluster;
`haproxy -c` checks that HAProxy itself accepts what we render.
"""

import configparser
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cluster import cli, extra_shards
from cluster.appnodes import AppNode, app_nodes, render_uwsgi_ini
from cluster.extra_shards import ExtraShard, next_alias, next_port, plan
from cluster.haproxy import haproxy_binary, parse_server_states, render_haproxy_cfg
from cluster.limits import upload_max_bytes
from cluster.pgbouncer import Pooler
from cluster.ports import free_port
from cluster.simulate import POINTS_PER_METRIC, readings_between
from cluster.util import ClusterError
from core import local_cluster
from core.local_cluster import REPO_ROOT


@pytest.fixture
def nodes(tmp_path: Path) -> list[AppNode]:
    return app_nodes(tmp_path, [18001, 18002])


UPLOAD_LIMIT = 2 * 1024 * 1024


def haproxy_cfg(nodes: list[AppNode], password: str = "s3cret-Pw_1") -> str:
    return render_haproxy_cfg(
        nodes,
        http_port=18000,
        stats_port=18404,
        stats_user="fleet",
        stats_password=password,
        upload_max_bytes=UPLOAD_LIMIT,
    )


def uwsgi_options(text: str) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read_string(text)
    return dict(parser["uwsgi"])


def uwsgi_values(text: str, option: str) -> list[str]:
    """Every value of an option uWSGI takes more than once (configparser keeps the last)."""
    return re.findall(rf"^{re.escape(option)} = (.*)$", text, flags=re.MULTILINE)


# -- HAProxy --------------------------------------------------------------------


def test_haproxy_balances_every_node_with_health_checks(nodes):
    cfg = haproxy_cfg(nodes)
    assert "server app-1 127.0.0.1:18001 check maxconn " in cfg
    assert "server app-2 127.0.0.1:18002 check maxconn " in cfg
    assert "option httpchk GET /livez" in cfg
    assert "http-check expect status 200" in cfg
    assert "default-server inter 500ms fastinter 250ms downinter 500ms fall 2 rise 2" in cfg
    assert "timeout check 500ms" in cfg
    assert "bind 127.0.0.1:18000" in cfg


def test_haproxy_keeps_one_thread_of_every_node_free_for_its_checks(tmp_path):
    small, big = AppNode(1, 18001, tmp_path, processes=1), AppNode(2, 18002, tmp_path, processes=3)
    cfg = haproxy_cfg([small, big])
    # 4 threads per worker process: HAProxy sends at most all of them but one.
    assert "server app-1 127.0.0.1:18001 check maxconn 3" in cfg
    assert "server app-2 127.0.0.1:18002 check maxconn 11" in cfg
    # The check is a file uWSGI serves itself on that spare thread, without Python.
    ini = render_uwsgi_ini(small, processes=1)
    assert uwsgi_options(ini)["threads"] == "4"
    assert f"/livez={small.livez_file}" in uwsgi_values(ini, "static-map")


def test_haproxy_refuses_bodies_over_the_upload_limit_before_reading_them(nodes):
    cfg = haproxy_cfg(nodes)
    deny = next(line.strip() for line in cfg.splitlines() if "deny_status 413" in line)
    assert deny.endswith(f"if {{ req.hdr_val(content-length) gt {UPLOAD_LIMIT} }}")
    body = deny.split(" string ", 1)[1].split(" if ", 1)[0].strip("'")
    assert json.loads(body) == {
        "detail": f"the body is larger than the upload limit of {UPLOAD_LIMIT} bytes"
    }
    assert "content-type application/json" in deny


def test_haproxy_holds_whole_requests_so_slow_clients_never_reach_a_node(nodes):
    cfg = haproxy_cfg(nodes)
    assert "option http-buffer-request" in cfg
    assert "timeout http-request 10s" in cfg
    # A request at the body limit, with uWSGI's largest header block, fits in a buffer.
    bufsize = int(re.search(r"tune.bufsize (\d+)", cfg).group(1))
    assert bufsize >= UPLOAD_LIMIT + 32 * 1024
    # One client address cannot take all of HAProxy's connections.
    assert "tcp-request connection track-sc0 src" in cfg
    limit = int(re.search(r"reject if \{ sc0_conn_cur gt (\d+) \}", cfg).group(1))
    assert 0 < limit < int(re.search(r"maxconn (\d+)", cfg).group(1))


def test_haproxy_alone_says_how_the_client_connected(nodes):
    assert "http-request del-header X-Forwarded-Proto" in haproxy_cfg(nodes)


def test_the_edge_limit_is_the_apps_own(settings, tmp_path):
    assert upload_max_bytes() == settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    assert AppNode(1, 18001, tmp_path).post_limit == settings.DATA_UPLOAD_MAX_MEMORY_SIZE


def test_haproxy_retries_and_says_why_that_is_safe(nodes):
    cfg = haproxy_cfg(nodes)
    assert "option redispatch" in cfg
    assert "retries 3" in cfg
    assert "retry-on conn-failure empty-response response-timeout" in cfg
    comments = "\n".join(line for line in cfg.splitlines() if line.strip().startswith("#"))
    assert "Retrying is safe" in comments
    assert "idempotent by batch_id" in comments
    assert "re-deliverable" in comments
    # Writes that are not idempotent are only retried when the node never saw them.
    assert "http-request disable-l7-retry unless retry_safe" in cfg


def test_haproxy_stats_page_needs_the_generated_password(nodes):
    cfg = haproxy_cfg(nodes, password="Gen3rated_pw-x")
    assert "bind 127.0.0.1:18404" in cfg
    assert "stats auth fleet:Gen3rated_pw-x" in cfg
    assert "stats uri /" in cfg
    assert "stats refresh 2s" in cfg


def test_haproxy_template_leaves_no_placeholder(nodes):
    assert "$" not in haproxy_cfg(nodes)


@pytest.mark.parametrize("password", ["", "with space", "has#hash", "a:b"])
def test_haproxy_refuses_credentials_that_would_break_the_config(nodes, password):
    with pytest.raises(ClusterError):
        haproxy_cfg(nodes, password=password)


def test_haproxy_needs_at_least_one_node():
    with pytest.raises(ClusterError):
        haproxy_cfg([])


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")
def test_haproxy_accepts_the_rendered_config(nodes, tmp_path):
    cfg_file = tmp_path / "haproxy.cfg"
    cfg_file.write_text(haproxy_cfg(nodes))
    proc = subprocess.run(
        ["haproxy", "-c", "-f", str(cfg_file)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout + proc.stderr


def test_server_states_come_from_our_backend_only():
    stats_csv = (
        "# pxname,svname,qcur,status,\n"
        "fleet_http,FRONTEND,,OPEN,\n"
        "app_nodes,app-1,0,UP,\n"
        "app_nodes,app-2,0,DOWN 1/2,\n"
        "app_nodes,BACKEND,0,UP,\n"
        "stats,FRONTEND,,OPEN,\n"
    )
    assert parse_server_states(stats_csv) == {"app-1": "UP", "app-2": "DOWN 1/2"}


# -- uWSGI ----------------------------------------------------------------------


def test_uwsgi_node_serves_the_project_over_http(nodes):
    options = uwsgi_options(render_uwsgi_ini(nodes[1], processes=3))
    assert options["http-socket"] == "127.0.0.1:18002"
    assert options["module"] == "core.wsgi:application"
    assert options["chdir"] == str(REPO_ROOT)
    assert options["virtualenv"] == str(REPO_ROOT / ".venv")
    assert options["env"] == "DJANGO_SETTINGS_MODULE=core.settings"
    assert options["need-app"] == "true"


def test_uwsgi_workers_threads_and_limits(nodes):
    options = uwsgi_options(render_uwsgi_ini(nodes[0], processes=3))
    assert options["master"] == "true"
    assert options["processes"] == "3"
    assert options["threads"] == "4"
    assert options["enable-threads"] == "true"
    assert options["lazy-apps"] == "true"
    assert options["harakiri"] == "30"
    assert options["max-requests"] == "100000"
    assert int(options["max-requests-delta"]) > 0
    assert options["post-buffering"] == "65536"
    assert options["limit-post"] == str(nodes[0].post_limit)
    assert options["buffer-size"] == "32768"
    assert options["die-on-term"] == "true"
    assert options["vacuum"] == "true"


def test_uwsgi_files_live_under_var_per_node(nodes, tmp_path):
    ini = render_uwsgi_ini(nodes[0], processes=1)
    options = uwsgi_options(ini)
    assert options["pidfile"] == str(tmp_path / "run" / "app-1.pid")
    assert options["master-fifo"] == str(tmp_path / "run" / "app-1.fifo")
    assert options["daemonize"] == str(tmp_path / "log" / "app-1.log")
    assert uwsgi_values(ini, "static-map") == [
        f"/static={tmp_path / 'static'}",
        f"/livez={tmp_path / 'run' / 'livez'}",
    ]
    assert options["log-format"].endswith("%(method) %(uri) %(status) %(msecs)ms")


def test_uwsgi_defaults_to_one_worker_per_core(nodes):
    options = uwsgi_options(nodes[0].render())
    assert int(options["processes"]) >= 1


# -- simulator --------------------------------------------------------------------


def test_simulated_batch_has_twenty_distinct_readings_in_its_window():
    end = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    start = end - timedelta(minutes=1)
    readings = readings_between(start, end, phase=0.0)
    assert len(readings) == 2 * POINTS_PER_METRIC == 20
    assert {r["metric"] for r in readings} == {"temp", "humidity"}
    assert len({(r["metric"], r["ts"]) for r in readings}) == 20
    stamps = {datetime.fromisoformat(r["ts"]) for r in readings}
    assert all(start < ts <= end for ts in stamps)


# -- extra shards (`python -m cluster add-shard`) ---------------------------------


def never_in_use(port: int) -> bool:
    return False


def plan_for(alias: str | None = None, **overrides: object) -> tuple[ExtraShard, bool]:
    arguments: dict[str, object] = {
        "recorded": {},
        "configured": ["shard_1", "shard_2", "directory"],
        "registered": {"shard_1": "127.0.0.1:55433/fleet_shard_1"},
        "reserved_ports": {55432, 55433, 55434},
        "base": 55435,
        "in_use": never_in_use,
    }
    arguments.update(overrides)
    return plan(alias, **arguments)  # type: ignore[arg-type]


def test_next_alias_follows_the_highest_number_and_never_fills_gaps():
    assert next_alias([]) == "shard_1"
    assert next_alias(["shard_1", "shard_2"]) == "shard_3"
    assert next_alias(["shard_1", "shard_7", "shard_x", "eu_1", "directory"]) == "shard_8"


def test_next_port_skips_claimed_ports_and_ports_something_listens_on():
    busy = {55436}
    port = next_port(55435, taken={55435, 55437}, in_use=lambda p: p in busy)
    assert port == 55438
    with pytest.raises(ClusterError, match="no free port"):
        next_port(65535, taken={65535}, in_use=never_in_use)


def test_first_extra_shard_is_shard_3_on_the_base_port():
    shard, new = plan_for()
    assert (shard, new) == (ExtraShard("shard_3", 55435, "fleet_shard_3"), True)


def test_next_extra_shard_counts_recorded_and_registered_aliases_and_their_ports():
    recorded = {"shard_3": ExtraShard("shard_3", 55435, "fleet_shard_3")}
    registered = {"shard_4": "10.0.0.7:5432/fleet_shard_4"}
    # 55435 is shard_3's even while it is stopped; 55436 is taken by something else.
    shard, new = plan_for(
        recorded=recorded, registered=registered, in_use=lambda port: port == 55436
    )
    assert (shard, new) == (ExtraShard("shard_5", 55437, "fleet_shard_5"), True)


def test_a_recorded_alias_is_reused_as_it_is():
    recorded = {"eu_1": ExtraShard("eu_1", 55440, "fleet_eu_1")}
    assert plan_for("eu_1", recorded=recorded) == (recorded["eu_1"], False)
    shard, new = plan_for("eu_2", recorded=recorded)
    assert (shard, new) == (ExtraShard("eu_2", 55435, "fleet_eu_2"), True)


@pytest.mark.parametrize(
    ("alias", "message"),
    [
        ("shard_2", "instances `python -m cluster up` runs itself"),
        ("directory", "instances `python -m cluster up` runs itself"),
        ("shard_1", "instances `python -m cluster up` runs itself"),
        ("Shard-3", "not a shard alias"),
        ("3shard", "not a shard alias"),
        ("x" * 64, "not a shard alias"),
    ],
)
def test_add_shard_refuses_configured_and_malformed_aliases(alias, message):
    with pytest.raises(ClusterError, match=message):
        plan_for(alias)


def test_an_alias_registered_elsewhere_is_refused():
    with pytest.raises(ClusterError, match=re.escape("registered at 10.0.0.7:5432/fleet_eu")):
        plan_for("eu", registered={"eu": "10.0.0.7:5432/fleet_eu"})


def test_extra_shard_state_round_trips_and_skips_garbage(tmp_path):
    path = extra_shards.state_path(tmp_path)
    shards = {
        "shard_3": ExtraShard("shard_3", 55435, "fleet_shard_3"),
        "shard_4": ExtraShard("shard_4", 55436, "fleet_shard_4"),
    }
    extra_shards.save(path, shards)
    assert extra_shards.load(path) == shards
    path.write_text('{"shard_3": {"port": 55435, "db": "fleet_shard_3"}, "Bad": {"port": 1,'
                    ' "db": "x"}, "shard_5": {"port": "x"}, "shard_6": 7}')  # fmt: skip
    assert list(extra_shards.load(path)) == ["shard_3"]
    assert extra_shards.load(tmp_path / "missing.json") == {}


def test_port_base_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(extra_shards.PORT_BASE_ENV, raising=False)
    assert extra_shards.port_base() == 55435
    monkeypatch.setenv(extra_shards.PORT_BASE_ENV, "56435")
    assert extra_shards.port_base() == 56435
    monkeypatch.setenv(extra_shards.PORT_BASE_ENV, "lots")
    with pytest.raises(ClusterError, match=extra_shards.PORT_BASE_ENV):
        extra_shards.port_base()


def test_up_manages_recorded_extra_shards_and_nothing_else(monkeypatch, tmp_path):
    monkeypatch.setattr(local_cluster, "VAR_DIR", tmp_path)
    before = [(instance.name, instance.port, db) for instance, db in cli.postgres_instances()]
    assert [name for name, _, _ in before] == ["directory", *local_cluster.SHARDS]
    assert cli.shard_endpoints() == {
        alias: {
            "host": local_cluster.HOST,
            "port": port,
            "pooler_port": local_cluster.pooler_port(port),
            "db": db,
        }
        for alias, (port, db) in local_cluster.SHARDS.items()
    }

    extra_shards.save(
        extra_shards.state_path(tmp_path),
        {"shard_3": ExtraShard("shard_3", 55435, "fleet_shard_3")},
    )
    after = cli.postgres_instances()
    assert [(i.name, i.port, db) for i, db in after] == [
        *before,
        ("shard_3", 55435, "fleet_shard_3"),
    ]
    assert after[-1][0].data_dir == tmp_path / "pg" / "shard_3"
    assert after[-1][0].log_file == tmp_path / "log" / "shard_3.log"
    assert cli.shard_endpoints()["shard_3"] == {
        "host": local_cluster.HOST,
        "port": 55435,
        "pooler_port": local_cluster.pooler_port(55435),
        "db": "fleet_shard_3",
    }


def test_haproxys_own_errors_are_json_with_retry_after(tmp_path):
    """A real HAProxy with no node up: the 503 a device gets says so in JSON, with Retry-After."""
    http_port, stats_port = free_port(), free_port()
    dead_nodes = app_nodes(tmp_path, [free_port()])  # nothing listens there
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        render_haproxy_cfg(
            dead_nodes,
            http_port=http_port,
            stats_port=stats_port,
            stats_user="fleet",
            stats_password="s3cret-Pw_1",
            upload_max_bytes=UPLOAD_LIMIT,
        ).replace("log stdout format raw local0", "")
    )
    proc = subprocess.Popen([haproxy_binary(), "-db", "-f", str(cfg)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
                connection.request("GET", "/api/v1/device/commands")
                response = connection.getresponse()
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "HAProxy did not start"
                time.sleep(0.1)
        body = json.loads(response.read())
        assert response.status == 503
        assert response.getheader("Content-Type") == "application/json"
        assert int(response.getheader("Retry-After")) > 0
        assert "retry later" in body["detail"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_pool_without_connections_is_refused(tmp_path):
    with pytest.raises(ClusterError, match="FLEET_POOL_SIZE=0: a pool needs at least 1"):
        Pooler("shard_1", 55433, tmp_path, pool_size=0)
    assert Pooler("shard_1", 55433, tmp_path, pool_size=1).port == local_cluster.pooler_port(55433)


def test_down_needs_no_django_settings_in_a_var_dir_never_brought_up(tmp_path):
    """`up` can fail before it writes var/cluster.json (with servers started); `down`
    must still stop them, so it may not need the secret key `up` would have written."""
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SECRET_KEY"}
    env["FLEET_VAR_DIR"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "cluster", "down"], cwd=local_cluster.REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "nothing was running"
