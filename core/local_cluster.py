"""Where the local development cluster listens and what it names things.

Both Django settings (as defaults under their environment variables) and the
`cluster` tool read this module, so the two always agree. Everything binds to
loopback on non-standard ports so it never clashes with system services; each
port can be moved with the environment variable named beside it.
"""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("FLEET_VAR_DIR", REPO_ROOT / "var"))
HOST = "127.0.0.1"

DB_USER = "fleet"
# A development-only password for loopback instances; production sets DATABASE_URL.
DB_PASSWORD = "fleet-local"

DIRECTORY_PORT = int(os.environ.get("FLEET_DIRECTORY_PORT", "55432"))
DIRECTORY_DB = "fleet_directory"

# alias -> (port, database name) of the shard instances `make up` starts.
SHARDS = {
    "shard_1": (int(os.environ.get("FLEET_SHARD_1_PORT", "55433")), "fleet_shard_1"),
    "shard_2": (int(os.environ.get("FLEET_SHARD_2_PORT", "55434")), "fleet_shard_2"),
}

REDIS_PORT = int(os.environ.get("FLEET_REDIS_PORT", "56379"))

# The app tier: HAProxy's frontend for devices and browsers, its stats page, and one
# uWSGI node per port behind it (FLEET_APP_PORTS is a comma-separated list).
HTTP_PORT = int(os.environ.get("FLEET_HTTP_PORT", "8000"))
STATS_PORT = int(os.environ.get("FLEET_STATS_PORT", "8404"))
APP_PORTS = [
    int(port) for port in os.environ.get("FLEET_APP_PORTS", "8001,8002").split(",") if port.strip()
]


def directory_url() -> str:
    return f"postgres://{DB_USER}:{DB_PASSWORD}@{HOST}:{DIRECTORY_PORT}/{DIRECTORY_DB}"


def redis_url(db: int = 0) -> str:
    return f"redis://{HOST}:{REDIS_PORT}/{db}"


def _state() -> dict:
    """What `up` wrote to var/cluster.json, or {} before the first `up`."""
    import json

    try:
        data = json.loads((VAR_DIR / "cluster.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def haproxy_stats_login() -> tuple[str, str]:
    """The stats page's login that `up` generated, or empty strings."""
    data = _state()
    return data.get("stats_user") or "", data.get("stats_password") or ""


def secret_key() -> str:
    """The Django secret key `up` generated for this cluster, or '' before the first `up`."""
    return _state().get("secret_key") or ""
