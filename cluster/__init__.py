"""Local development cluster: PostgreSQL directory + shards and Redis on loopback.

Run as ``python -m cluster up|down|status``. Standard library only (no Django), so it
can bring up the databases before Django's dependencies are even importable. The
reusable pieces (`cluster.postgres.PostgresInstance`, `cluster.redis.RedisInstance`,
`cluster.ports.free_port`) are also used by the test harness for throw-away instances.
"""

from cluster.util import ClusterError

__all__ = ["ClusterError"]
