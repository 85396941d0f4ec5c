from django.apps import AppConfig


class ShardsConfig(AppConfig):
    """Rows that live on a device's shard, and the operations on shards."""

    name = "shards"
    verbose_name = "Shard data"

    def ready(self) -> None:
        from django.db.models.signals import post_delete

        from core.models import Device
        from shards.deletion import record_deletion

        post_delete.connect(record_deletion, sender=Device, dispatch_uid="shards.record_deletion")
