from django.apps import AppConfig


class CentralAdminConfig(AppConfig):
    """The admin across the directory and all shards, and the ops views."""

    name = "central_admin"
    verbose_name = "Central admin"
