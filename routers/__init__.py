"""Everything that decides which database a query uses.

Public entry points:
- `routers.db_router.ShardRouter`: the Django database router.
- `routers.placement`: device -> shard resolution with its two-level cache.
- `routers.registry`: shard connections registered at run time from the directory.
- `routers.fanout`: run a function on many shards in parallel.
- `routers.managers`: `for_device()` / `on_shard()` querysets for shard models.
"""
