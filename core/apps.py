from django.apps import AppConfig


class CoreConfig(AppConfig):
    """The directory: users, devices, credentials, placement, shard registry."""

    name = "core"
    verbose_name = "Directory"

    def ready(self) -> None:
        from core import checks, signals  # noqa: F401  (registers checks and receivers)
