"""Moving a device between shards online (the fence protocol) and cleaning up afterwards.

tables: which shard tables hold a device's rows; streams: raw connections and
COPY piped from one PostgreSQL to another; copying: the bulk and remainder
copies; verify: per-table counts and checksums; protocol: the phases of a move
job, resumable after a crash; cleanup: removing old rows after the grace period.
"""
