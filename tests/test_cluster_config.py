"""The local cluster's rendered configs: uWSGI nodes, HAProxy in front of them, the simulator.

The renderers are pure, so these tests need no running cluster; `haproxy -c` checks that
HAProxy itself accepts what we render.
"""

import configparser
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cluster.appnodes import AppNode, app_nodes, render_uwsgi_ini
from cluster.haproxy import parse_server_states, render_haproxy_cfg
from cluster.simulate import POINTS_PER_METRIC, readings_between
from cluster.util import ClusterError
from core.local_cluster import REPO_ROOT


@pytest.fixture
def nodes(tmp_path: Path) -> list[AppNode]:
    return app_nodes(tmp_path, [18001, 18002])


def haproxy_cfg(nodes: list[AppNode], password: str = "s3cret-Pw_1") -> str:
    return render_haproxy_cfg(
        nodes, http_port=18000, stats_port=18404, stats_user="fleet", stats_password=password
    )


def uwsgi_options(text: str) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read_string(text)
    return dict(parser["uwsgi"])


# -- HAProxy --------------------------------------------------------------------


def test_haproxy_balances_every_node_with_health_checks(nodes):
    cfg = haproxy_cfg(nodes)
    assert "server app-1 127.0.0.1:18001 check" in cfg
    assert "server app-2 127.0.0.1:18002 check" in cfg
    assert "option httpchk GET /healthz" in cfg
    assert "http-check expect status 200" in cfg
    assert "default-server inter 500ms fastinter 250ms downinter 500ms fall 2 rise 2" in cfg
    assert "timeout check 500ms" in cfg
    assert "bind 127.0.0.1:18000" in cfg


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
    assert options["max-requests"] == "5000"
    assert int(options["max-requests-delta"]) > 0
    assert options["post-buffering"] == "65536"
    assert options["buffer-size"] == "32768"
    assert options["die-on-term"] == "true"
    assert options["vacuum"] == "true"


def test_uwsgi_files_live_under_var_per_node(nodes, tmp_path):
    options = uwsgi_options(render_uwsgi_ini(nodes[0], processes=1))
    assert options["pidfile"] == str(tmp_path / "run" / "app-1.pid")
    assert options["master-fifo"] == str(tmp_path / "run" / "app-1.fifo")
    assert options["daemonize"] == str(tmp_path / "log" / "app-1.log")
    assert options["static-map"] == f"/static={tmp_path / 'static'}"
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
