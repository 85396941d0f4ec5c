from django.apps import AppConfig


class ApiConfig(AppConfig):
    """HTTP endpoints only; the data they touch belongs to core/ and shards/."""

    name = "api"
    verbose_name = "API"
