"""Production-safe defaults: DEBUG off unless asked for, no key unless one is given, and
nothing exposed that cannot work (a password reset with no mail to send)."""

import os
import subprocess
import sys

from django.test import Client

from core import local_cluster

PRINT_DEBUG = (
    "import django; django.setup(); from django.conf import settings; print(settings.DEBUG)"
)


def run_settings(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    return subprocess.run(
        [sys.executable, "-c", PRINT_DEBUG],
        cwd=local_cluster.REPO_ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "core.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_debug_is_off_unless_asked_for():
    assert run_settings().stdout.strip() == "False"
    assert run_settings(DJANGO_DEBUG="true").stdout.strip() == "True"


def test_without_a_key_and_without_a_local_cluster_settings_refuse_to_load(tmp_path):
    refused = run_settings(FLEET_VAR_DIR=str(tmp_path))
    assert refused.returncode != 0
    assert "DJANGO_SECRET_KEY" in refused.stderr
    given = run_settings(FLEET_VAR_DIR=str(tmp_path), DJANGO_SECRET_KEY="k" * 50)
    assert given.stdout.strip() == "False"


def test_a_404_page_lists_no_urls_by_default(shards):
    answer = Client().get("/no/such/page/")
    assert answer.status_code == 404
    assert "URLconf" not in answer.content.decode() and "admin/" not in answer.content.decode()


def test_password_reset_is_not_exposed_and_password_change_needs_a_login(shards):
    client = Client()
    for path in ("/accounts/password_reset/", "/accounts/reset/MQ/set-password/"):
        assert client.get(path).status_code == 404, path
        assert client.post(path, {"email": "a@example.com"}).status_code == 404, path
    change = client.get("/accounts/password_change/")
    assert change.status_code == 302 and change["Location"].startswith("/accounts/login/")
