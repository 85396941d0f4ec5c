from django.apps import AppConfig


class ShardsConfig(AppConfig):
    """Rows that live on a device's shard, and the operations on shards."""

    name = "shards"
    verbose_name = "Shard data"
