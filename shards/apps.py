from django.apps import AppConfig


class ShardsConfig(AppConfig):
    """Rows that live on a device's shard, and the operations on shards."""

    name = "shards"
    verbose_name = "Shard data"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_migrate

        from core.models import Device
        from shards.deletion import record_deletion

        post_delete.connect(record_deletion, sender=Device, dispatch_uid="shards.record_deletion")
        post_migrate.connect(
            install_capture_after_migrate, sender=self, dispatch_uid="shards.install_capture"
        )


def install_capture_after_migrate(sender, using: str, **kwargs) -> None:
    """Every device table of a shard logs a moving device's changes, also tables added by a
    migration after the one that installed the triggers (shards.moves.capture)."""
    from django.db import connections

    from routers.aliases import is_shard_alias
    from shards.moves.capture import install_capture_on

    if is_shard_alias(using):
        install_capture_on(connections[using])
