from django.apps import AppConfig


class RoutersConfig(AppConfig):
    """Query routing; holds no models."""

    name = "routers"
