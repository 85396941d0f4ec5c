"""The deployed settings: HTTPS only behind HAProxy, and `check --deploy` clean.

The deployment's environment is the one ansible/roles/fleet_code writes to every host
(its fixed entries, plus a secret key and a host name as the secrets file and the
inventory give them). Each case runs Django in a subprocess, because settings are read
from the environment once, at import.
"""

import json
import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from core.local_cluster import REPO_ROOT

ANSIBLE_CODE_DEFAULTS = REPO_ROOT / "ansible" / "roles" / "fleet_code" / "defaults" / "main.yml"
SITE = "fleet.example.com"


def deployed_environment() -> dict[str, str]:
    """The Ansible role's environment for Django, with its templated values filled in."""
    role_env = yaml.safe_load(Path(ANSIBLE_CODE_DEFAULTS).read_text())["fleet_code_env"]
    fixed = {key: str(value) for key, value in role_env.items() if "{{" not in str(value)}
    return {
        **{key: value for key, value in os.environ.items() if not key.startswith("DJANGO_")},
        **fixed,
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": SITE,
    }


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_ansible_deploys_production_settings_behind_tls():
    env = deployed_environment()
    assert env["DJANGO_SETTINGS_MODULE"] == "core.settings"
    assert env["DJANGO_DEBUG"] == "0"
    assert env["DJANGO_BEHIND_TLS_PROXY"] == "1"


def test_check_deploy_is_clean_with_the_deployed_environment():
    proc = manage("check", "--deploy", "--fail-level", "WARNING", env=deployed_environment())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "System check identified no issues (0 silenced)." in proc.stdout


# What a browser or device would get from a node, through HAProxy (X-Forwarded-Proto
# https) or straight over plain HTTP (operators' and deploy scripts' probes).
PROBE = textwrap.dedent(
    """
    import json
    import os
    from django.test import Client

    def answer(path, **headers):
        response = Client().get(path, headers={"host": os.environ["PROBE_HOST"], **headers})
        cookie = response.cookies.get("csrftoken")
        return {
            "status": response.status_code,
            "location": response.headers.get("Location"),
            "hsts": response.headers.get("Strict-Transport-Security"),
            "csrf_cookie_secure": bool(cookie and cookie["secure"]),
        }

    print(json.dumps({
        "healthz": answer("/healthz"),
        "readyz": answer("/readyz"),
        "login_http": answer("/accounts/login/"),
        "login_https": answer("/accounts/login/", x_forwarded_proto="https"),
    }))
    """
)


def probe(env: dict[str, str]) -> dict[str, dict]:
    proc = manage("shell", "-c", PROBE, env={**env, "LOG_LEVEL": "ERROR", "PROBE_HOST": SITE})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_deployed_site_is_https_only_but_the_probes_answer_over_plain_http():
    answers = probe(deployed_environment())
    assert answers["login_http"]["status"] == 301
    assert answers["login_http"]["location"] == f"https://{SITE}/accounts/login/"
    https = answers["login_https"]
    assert https["status"] == 200
    assert https["hsts"] == "max-age=31536000; includeSubDomains; preload"
    assert https["csrf_cookie_secure"] is True
    # Operators and deploy scripts probe the nodes over plain HTTP: never redirected.
    assert answers["healthz"]["status"] == 200
    assert answers["readyz"]["status"] in (200, 503)


def test_the_local_cluster_stays_plain_http():
    env = {key: value for key, value in os.environ.items() if not key.startswith("DJANGO_")}
    answers = probe({**env, "DJANGO_ALLOWED_HOSTS": SITE})
    assert answers["login_http"]["status"] == 200
    assert answers["login_http"]["hsts"] is None
    assert answers["login_http"]["csrf_cookie_secure"] is False
