"""Step 3 of `up`: migrate, collect static files, register the shards, seed demo data.

Also `add-shard`'s last step: `manage.py add_shard` for an extra shard's new instance.

Each step is a separate `.venv/bin/python manage.py ...` subprocess so this tool never
imports Django. stdout/stderr go to var/log/manage.log (secrets redacted from the
command lines written there); seed_demo's stdout is the JSON result we parse.
"""

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from cluster.util import ClusterError, tail
from core.local_cluster import DB_PASSWORD, DB_USER, HOST, REPO_ROOT, SHARDS, client_port

STEP_TIMEOUT = 900


def manage_py() -> Path:
    return REPO_ROOT / "manage.py"


def venv_python() -> str:
    """The project's virtualenv interpreter, falling back to the one running us."""
    candidate = REPO_ROOT / ".venv" / "bin" / "python"
    return str(candidate) if os.path.exists(candidate) else sys.executable


def _manage(
    args: list[str], log: IO[str], *, capture: bool = False, secrets: tuple[str, ...] = ()
) -> str:
    shown = shlex.join(["manage.py", *args])
    for secret in secrets:
        shown = shown.replace(secret, "***")
    print(f"  {shown}", flush=True)
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} $ {shown}\n")
    log.flush()
    # Explicit: a caller such as pytest may have exported another settings module.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DJANGO_SETTINGS_MODULE": "core.settings"}
    try:
        proc = subprocess.run(
            [venv_python(), str(manage_py()), *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE if capture else log,
            stderr=log,
            text=True,
            timeout=STEP_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"`{shown}` timed out after {STEP_TIMEOUT}s") from exc
    log.flush()
    if proc.returncode != 0:
        raise ClusterError(
            f"`{shown}` failed (exit {proc.returncode}). Last lines of {log.name}:\n"
            f"{tail(Path(log.name))}"
        )
    return proc.stdout or ""


def _parse_seed_output(stdout: str) -> dict[str, Any]:
    """seed_demo --json prints one JSON object; tolerate stray lines around it."""
    candidates = [stdout.strip(), *reversed(stdout.strip().splitlines())]
    for text in candidates:
        try:
            data = json.loads(text)
        except ValueError:
            continue
        if isinstance(data, dict):
            return data
    raise ClusterError(f"manage.py seed_demo --json printed no JSON object:\n{stdout[-2000:]}")


def run_django_steps(
    admin_password: str, web_password: str, provisioning_key: str, log_file: Path
) -> dict[str, Any] | None:
    """Migrate the directory, register + migrate shards, seed demo data.

    Returns seed_demo's JSON, or None when manage.py does not exist yet.
    """
    if not manage_py().exists():
        print(f"  {manage_py().name} not found; skipping migrations and demo data")
        return None
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as log:
        _manage(["migrate", "--noinput"], log)
        # uWSGI serves var/static itself (static-map): Django does not under uWSGI.
        _manage(["collectstatic", "--noinput", "--verbosity", "0"], log)
        for alias, (port, dbname) in SHARDS.items():
            _manage(
                [
                    "add_shard",
                    alias,
                    # At its pooler (FLEET_POOLER=off: the server): where processes reach it.
                    *("--host", HOST, "--port", str(client_port(port)), "--db-name", dbname),
                    *("--user", DB_USER, "--password", DB_PASSWORD),
                ],
                log,
                secrets=(DB_PASSWORD,),
            )
        _manage(["migrate_shards"], log)
        _manage(
            ["provisioning_key", "set", "local", provisioning_key],
            log,
            secrets=(provisioning_key,),
        )
        stdout = _manage(
            [
                "seed_demo",
                # `--opt=value`: a random password may begin with "-", which argparse
                # would take for an option of its own.
                f"--admin-password={admin_password}",
                f"--user-password={web_password}",
                "--json",
            ],
            log,
            capture=True,
            secrets=(admin_password, web_password),
        )
    return _parse_seed_output(stdout)


def add_extra_shard(alias: str, port: int, dbname: str, log_file: Path) -> None:
    """Create, migrate and register an extra shard's database; its output is shown indented.

    `port` is the shard's pooler, where every process will reach it.
    No login is passed: the registry row then names none, and every process uses
    SHARD_DEFAULT_USER/PASSWORD, the local cluster's login.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as log:
        stdout = _manage(
            [
                "add_shard",
                alias,
                *("--host", HOST, "--port", str(port), "--db-name", dbname),
                "--create-db",
            ],
            log,
            capture=True,
        )
        log.write(stdout)
    for line in stdout.splitlines():
        print(f"    {line}")
