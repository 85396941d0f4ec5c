"""`python -m cluster up|down|status`: the local cluster's command line.

Everything is derived from core.local_cluster (ports, names, VAR_DIR), the same module
Django's settings read, so the tool and the app cannot disagree about where things are.
"""

import argparse
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cluster import state
from cluster.django_steps import run_django_steps
from cluster.postgres import PostgresInstance
from cluster.redis import RedisInstance
from cluster.util import ClusterError
from core import local_cluster as lc

EXIT_NOT_ALL_UP = 3


def var_dir() -> Path:
    return lc.VAR_DIR.absolute()


def state_file() -> Path:
    return var_dir() / "cluster.json"


def shown(path: Path) -> str:
    """`path` relative to the working directory when below it, for short messages."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def postgres_instances() -> list[tuple[PostgresInstance, str]]:
    """(instance, database name) for the directory and every configured shard."""
    root, logs = var_dir() / "pg", var_dir() / "log"
    instances = [
        (
            PostgresInstance(
                "directory", lc.DIRECTORY_PORT, root, logs, port_env="FLEET_DIRECTORY_PORT"
            ),
            lc.DIRECTORY_DB,
        )
    ]
    for alias, (port, dbname) in lc.SHARDS.items():
        port_env = f"FLEET_{alias.upper()}_PORT"
        instances.append((PostgresInstance(alias, port, root, logs, port_env=port_env), dbname))
    return instances


def redis_instance() -> RedisInstance:
    var = var_dir()
    return RedisInstance(
        lc.REDIS_PORT,
        data_dir=var / "redis",
        conf_file=var / "redis" / "redis.conf",
        pid_file=var / "run" / "redis.pid",
        log_file=var / "log" / "redis.log",
    )


def _endpoint(port: int, dbname: str) -> dict[str, Any]:
    return {"host": lc.HOST, "port": port, "db": dbname}


# -- up -------------------------------------------------------------------------


def up() -> int:
    """Start everything that is not running, create databases, run the Django steps."""
    var_dir().mkdir(parents=True, exist_ok=True)
    print("postgres:")
    for instance, dbname in postgres_instances():
        started = instance.ensure_running()
        created = instance.create_database(dbname)
        print(
            f"  {instance.name:<10} {lc.HOST}:{instance.port}  "
            f"{'started' if started else 'already running'}, database {dbname}"
            f"{' created' if created else ''}",
            flush=True,
        )
    print("redis:")
    redis = redis_instance()
    started = redis.ensure_running()
    print(f"  {'redis':<10} {lc.HOST}:{redis.port}  {'started' if started else 'already running'}")

    data = state.load(state_file())
    data["directory"] = _endpoint(lc.DIRECTORY_PORT, lc.DIRECTORY_DB)
    data["shards"] = {alias: _endpoint(port, dbname) for alias, (port, dbname) in lc.SHARDS.items()}
    data["redis"] = redis.url()
    data.setdefault("admin_user", None)
    for key in ("admin_password", "web_password"):
        if not data.get(key):
            data[key] = secrets.token_urlsafe(12)
    if not data.get("provisioning_key"):
        data["provisioning_key"] = "fleet_" + secrets.token_urlsafe(32)
    data.setdefault("demo_devices", [])
    # Saved before the Django steps, so a failed seed_demo cannot lose the password.
    state.save(state_file(), data)

    print("django:", flush=True)
    seed = run_django_steps(
        data["admin_password"],
        data["web_password"],
        data["provisioning_key"],
        var_dir() / "log" / "manage.log",
    )
    if seed is not None:
        data["admin_user"] = seed.get("admin_user", data["admin_user"])
        data["web_user"] = seed.get("web_user")
        data["demo_devices"] = state.merge_devices(
            data.get("demo_devices") or [], seed.get("devices") or []
        )
        state.save(state_file(), data)

    _print_summary(data)
    return 0


def _print_summary(data: dict[str, Any]) -> None:
    logs = var_dir() / "log"
    real_logs = Path(os.path.realpath(logs))
    print()
    print("Local cluster is up:")
    directory = data["directory"]
    print(f"  directory  postgres {directory['host']}:{directory['port']}/{directory['db']}")
    for alias, shard in data["shards"].items():
        print(f"  {alias:<10} postgres {shard['host']}:{shard['port']}/{shard['db']}")
    print(f"  redis      {data['redis']}")
    print(f"  DB login   {lc.DB_USER} / {lc.DB_PASSWORD}")
    where = shown(logs) + (f" (-> {real_logs})" if real_logs != logs else "")
    print(f"  logs       {where}")
    print(f"  state      {shown(state_file())}")
    if data.get("admin_user"):
        print(f"  admin      {data['admin_user']} / {data['admin_password']}")
        print(f"  web user   {data.get('web_user')} / {data['web_password']}")
        print(f"  fleet key  {data['provisioning_key']}")
        print(f"  devices    {len(data.get('demo_devices') or [])} demo devices (tokens in state)")
    else:
        print("  admin      not seeded yet (manage.py seed_demo has not run)")
    print("Run a management command: .venv/bin/python manage.py cluster_status")
    print("Stop everything:          .venv/bin/python -m cluster down")


# -- down -----------------------------------------------------------------------


def _all_postgres_instances() -> list[PostgresInstance]:
    """Configured instances plus any other data dir `up` left in var/pg (e.g. a renamed shard)."""
    instances = [instance for instance, _ in postgres_instances()]
    known = {instance.name for instance in instances}
    root = var_dir() / "pg"
    if root.is_dir():
        for entry in sorted(root.iterdir()):
            if entry.name not in known and (entry / "PG_VERSION").exists():
                instances.append(PostgresInstance(entry.name, 0, root, var_dir() / "log"))
    return instances


def down() -> int:
    """Stop only what `up` started from this var/; idempotent."""
    stopped = 0
    redis = redis_instance()
    pid = redis.pid()
    if redis.stop():
        print(f"stopped redis (pid {pid})")
        stopped += 1
    for instance in _all_postgres_instances():
        pid = instance.pid()
        if instance.stop():
            print(f"stopped postgres {instance.name} (pid {pid})")
            stopped += 1
    if not stopped:
        print("nothing was running")
    return 0


# -- status ---------------------------------------------------------------------


def status() -> int:
    """One row per component; exit 3 unless every component answers."""
    rows: list[tuple[str, str, str, str, str]] = []
    for instance, _ in postgres_instances():
        pid = instance.pid()
        port = instance.running_port() or instance.port
        answers = instance.is_ready()
        rows.append((instance.name, "postgres", str(port), str(pid or "-"), _yes(answers)))
    redis = redis_instance()
    rows.append(
        ("redis", "redis", str(redis.port), str(redis.pid() or "-"), _yes(redis.is_ready()))
    )

    header = ("NAME", "KIND", "PORT", "PID", "ANSWERS")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0 if all(row[4] == "yes" for row in rows) else EXIT_NOT_ALL_UP


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


# -- entry point ----------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cluster", description="Run the local sharded cluster (PostgreSQL + Redis)."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start everything, migrate and seed demo data (idempotent)")
    commands.add_parser("down", help="stop what `up` started")
    commands.add_parser("status", help="show each component; exit 3 unless all answer")
    args = parser.parse_args(argv)
    handler = {"up": up, "down": down, "status": status}[args.command]
    try:
        return handler()
    except ClusterError as exc:
        print(f"cluster {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
