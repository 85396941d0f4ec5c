from django.apps import AppConfig


class CoreConfig(AppConfig):
    """The directory: users, devices, credentials, placement, shard registry."""

    name = "core"
    verbose_name = "Directory"
