"""Which database family a model or app belongs to: the directory or the shards."""

from django.conf import settings
from django.db import models

DIRECTORY_ALIAS = "default"


def is_shard_app(app_label: str) -> bool:
    return app_label in settings.SHARD_APPS


def is_shard_model(model: type[models.Model]) -> bool:
    return is_shard_app(model._meta.app_label)


def is_shard_alias(alias: str) -> bool:
    return alias != DIRECTORY_ALIAS
