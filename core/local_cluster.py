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

# PgBouncer (transaction pooling) in front of each PostgreSQL instance: every process
# reaches a database through it, at the server's port plus this offset.
POOLER_PORT_OFFSET = int(os.environ.get("FLEET_POOLER_PORT_OFFSET", "2000"))
# Server connections each pooler opens per database, at most, however many clients.
POOL_SIZE = int(os.environ.get("FLEET_POOL_SIZE", "20"))
# FLEET_POOLER=off: Django processes connect to the directory and the configured shards
# directly (the poolers still run); for measuring what the pooler costs (make bench).
POOLED = os.environ.get("FLEET_POOLER", "on") != "off"

REDIS_PORT = int(os.environ.get("FLEET_REDIS_PORT", "56379"))

# FLEET_REPLICAS=2 (or more): each database is that many PostgreSQL servers managed by
# Patroni (synchronous replication, automatic failover; one etcd holds the leader keys),
# and the database's own port above is a TCP proxy that leads to the current primary.
# 1 (the default): one PostgreSQL server per database, listening on that port itself.
REPLICAS = int(os.environ.get("FLEET_REPLICAS", "1"))
# Replica n of the database whose port is P listens on P + NODE_PORT_OFFSET + 100 n,
# its Patroni REST API on P + PATRONI_PORT_OFFSET + 100 n.
NODE_PORT_OFFSET = int(os.environ.get("FLEET_NODE_PORT_OFFSET", "1000"))
PATRONI_PORT_OFFSET = int(os.environ.get("FLEET_PATRONI_PORT_OFFSET", "3000"))
ETCD_PORT = int(os.environ.get("FLEET_ETCD_PORT", "52379"))

# The app tier: HAProxy's frontend for devices and browsers, its stats page, and one
# uWSGI node per port behind it (FLEET_APP_PORTS is a comma-separated list).
HTTP_PORT = int(os.environ.get("FLEET_HTTP_PORT", "8000"))
STATS_PORT = int(os.environ.get("FLEET_STATS_PORT", "8404"))
# Each node's uWSGI worker processes (0: one per CPU core) and threads per process.
APP_PROCESSES = int(os.environ.get("FLEET_APP_PROCESSES", "0"))
APP_THREADS = int(os.environ.get("FLEET_APP_THREADS", "4"))
APP_PORTS = [
    int(port) for port in os.environ.get("FLEET_APP_PORTS", "8001,8002").split(",") if port.strip()
]


def pooler_port(server_port: int) -> int:
    """Where the pooler in front of the PostgreSQL instance on `server_port` listens."""
    return server_port + POOLER_PORT_OFFSET


def node_port(server_port: int, replica: int) -> int:
    """Where replica `replica` (0, 1, ...) of the database on `server_port` listens."""
    return server_port + NODE_PORT_OFFSET + 100 * replica


def patroni_port(server_port: int, replica: int) -> int:
    """The Patroni REST API of that replica."""
    return server_port + PATRONI_PORT_OFFSET + 100 * replica


def client_port(server_port: int) -> int:
    """Where Django processes reach the PostgreSQL instance on `server_port`."""
    return pooler_port(server_port) if POOLED else server_port


def directory_url() -> str:
    """The directory as every process reaches it: through its pooler."""
    port = client_port(DIRECTORY_PORT)
    return f"postgres://{DB_USER}:{DB_PASSWORD}@{HOST}:{port}/{DIRECTORY_DB}"


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
