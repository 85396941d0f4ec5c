"""Analysis on each shard, run by Celery beat: rollups, alerts, command expiry, retention."""
