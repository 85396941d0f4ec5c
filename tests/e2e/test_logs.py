"""No credential reaches any log of a running cluster: app nodes, HAProxy, Celery, PostgreSQL.

Tokens are sent every way a careless or hostile client might send them (wrong scheme,
no scheme, with junk after them), a fleet key is used and a password is typed wrong,
all through HAProxy; then every file under the cluster's log directory is searched.
"""

import http.client
import json
import re
import time
from contextlib import closing

from tests.e2e.conftest import E2E_ENV, E2E_VAR, E2ECluster, enroll, report

PORT = int(E2E_ENV["FLEET_HTTP_PORT"])


def request(method: str, path: str, body: str = "", headers: dict | None = None):
    with closing(http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)) as connection:
        connection.request(method, path, body=body or None, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()


def test_no_credential_reaches_any_log(e2e_cluster: E2ECluster, capsys):
    device = enroll(e2e_cluster, f"log-probe-{time.time_ns()}")
    secret = device.token.split(".", 1)[1]
    upload = json.dumps({"batch_id": "log-1", "readings": [{"ts": 1, "metric": "t", "value": 1.0}]})
    for header in (
        f"Token {device.token}",
        device.token,
        f"Bearer {device.token}x",
        f"Basic {device.token}",
        f"bearer {device.token} and more",
        f"Bearer {device.token}",
    ):
        auth = {"Authorization": header, "Content-Type": "application/json"}
        request("POST", "/api/v1/device/uploads", upload, auth)
        request("GET", "/api/v1/device/commands", headers=auth)

    _, headers, page = request("GET", "/accounts/login/")
    cookie = next(v for k, v in headers if k.lower() == "set-cookie" and "csrftoken" in v)
    csrf = cookie.split("csrftoken=", 1)[1].split(";", 1)[0]
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page)[1].decode()
    password = f"wrong-password-{time.time_ns()}"
    form = f"username=admin&password={password}&csrfmiddlewaretoken={token}"
    login = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Cookie": f"csrftoken={csrf}",
        "Referer": f"http://127.0.0.1:{PORT}/accounts/login/",
    }
    assert request("POST", "/accounts/login/", form, login)[0] == 200
    time.sleep(1)  # HAProxy and uWSGI write their lines as they go; let them land

    logs = [path for path in (E2E_VAR / "log").rglob("*") if path.is_file()]
    assert any("app-" in path.name for path in logs), logs
    searched = 0
    for path in logs:
        text = path.read_bytes()
        searched += len(text)
        for value in (secret, e2e_cluster.info["provisioning_key"], password, csrf):
            assert value.encode() not in text, f"{value[:6]}... is in {path}"
    report(capsys, f"\nno credential in {len(logs)} log files ({searched / 1e6:.1f} MB)")
