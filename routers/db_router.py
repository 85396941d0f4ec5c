"""The Django database router: directory models on the directory, shard models on shards.

A shard model has no sensible default database, so a query without device
context is an error, never a silent fall-back to the directory or to the first
shard. Device context comes from `Model.objects.for_device(device)` (which
routes with `.using()` and never reaches this router) or from the `instance`
hint Django passes when saving or deleting an object.
"""

from typing import Any

from django.db import models

from routers.aliases import DIRECTORY_ALIAS, is_shard_alias
from routers.errors import MissingDeviceContext
from routers.placement import shard_for_device
from routers.silos import is_shard_app, is_shard_model


def _shard_for_hints(model: type[models.Model], hints: dict[str, Any]) -> str:
    instance = hints.get("instance")
    if instance is not None:
        if instance._state.db is not None:
            return instance._state.db
        device_id = getattr(instance, "device_id", None)
        if device_id is not None:
            return shard_for_device(device_id)
    name = model.__name__
    raise MissingDeviceContext(
        f"{model._meta.label} lives on a shard and this query does not say which device it is"
        f" for. Use {name}.objects.for_device(device) for one device's rows, or"
        f" {name}.objects.on_shard(alias) for work on a whole shard."
    )


class ShardRouter:
    """Routes by model family; see the module docstring for the contract."""

    def db_for_read(self, model: type[models.Model], **hints: Any) -> str:
        if is_shard_model(model):
            return _shard_for_hints(model, hints)
        return DIRECTORY_ALIAS

    def db_for_write(self, model: type[models.Model], **hints: Any) -> str:
        return self.db_for_read(model, **hints)

    def allow_relation(self, obj1: models.Model, obj2: models.Model, **hints: Any) -> bool | None:
        """Relations never cross databases: shard rows refer to devices by plain id."""
        if is_shard_model(type(obj1)) or is_shard_model(type(obj2)):
            both_shard = is_shard_model(type(obj1)) and is_shard_model(type(obj2))
            return both_shard and obj1._state.db == obj2._state.db
        return None

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool:
        if is_shard_app(app_label):
            return is_shard_alias(db)
        return db == DIRECTORY_ALIAS
