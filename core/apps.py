from django.apps import AppConfig


class CoreConfig(AppConfig):
    """The directory: users, devices, credentials, placement, shard registry."""

    name = "core"
    verbose_name = "Directory"

    def ready(self) -> None:
        from core import checks  # noqa: F401  (registers the system checks)
