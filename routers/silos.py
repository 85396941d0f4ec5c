"""Where a model lives, declared where the model is defined.

A model whose rows live on the shards derives from `ShardModel`; every other model
lives on the directory. That one declaration is all routing needs:

- it migrates on every shard and never on the directory (the router's allow_migrate);
- it routes by device: its manager's `for_device()` and `on_shard()` name the shard,
  and a query without either raises (routers.db_router);
- its class is checked as it is built: the manager must be a ShardQuerySet's, it
  must carry a `device_id` column (or say `per_shard = True`, for a shard's own
  bookkeeping rows such as its identity), and it may have no relation field at all,
  since a foreign key cannot cross databases;
- moves, cleanups and checksums find its table through `shard_models()`.

An app holds models of one family only (migrations are decided per app).
"""

from functools import cache

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.db.models.signals import class_prepared

from routers.managers import ShardManager, ShardQuerySet


class ShardModel(models.Model):
    """Base of every model that lives on the shards (see the module docstring)."""

    # True for rows about the shard itself rather than one device (no device_id).
    per_shard = False
    # False for a shard's own bookkeeping about a device (its fence, a move's change
    # log): each shard keeps its own, and moving the device leaves it where it is.
    moves_with_device = True

    objects = ShardManager()

    class Meta:
        abstract = True


def is_shard_model(model: type[models.Model]) -> bool:
    return issubclass(model, ShardModel)


def shard_models() -> list[type[models.Model]]:
    """Every concrete shard model, in a stable order."""
    return sorted(
        (model for model in apps.get_models() if is_shard_model(model)),
        key=lambda model: model._meta.label,
    )


@cache
def shard_apps() -> frozenset[str]:
    """Apps whose models live on the shards (each holds shard models only)."""
    labels = set()
    for config in apps.get_app_configs():
        families = {is_shard_model(model) for model in config.get_models()}
        if families == {True, False}:
            raise ImproperlyConfigured(
                f"app {config.label!r} mixes shard and directory models; migrations are"
                " decided per app, so give each family an app of its own"
            )
        if families == {True}:
            labels.add(config.label)
    return frozenset(labels)


def is_shard_app(app_label: str) -> bool:
    return app_label in shard_apps()


def check_shard_model(model: type[models.Model]) -> None:
    """Raise ImproperlyConfigured if a shard model breaks the rules of the module docstring."""
    meta = model._meta
    if meta.abstract or not is_shard_model(model):
        return
    queryset_class = getattr(model._default_manager, "_queryset_class", None)
    if queryset_class is None or not issubclass(queryset_class, ShardQuerySet):
        raise ImproperlyConfigured(
            f"{meta.label} lives on the shards but its manager is not a ShardQuerySet's:"
            " derive custom managers from routers.managers.ShardManager"
        )
    columns = {field.column for field in meta.concrete_fields}
    if not model.per_shard and "device_id" not in columns:
        raise ImproperlyConfigured(
            f"{meta.label} lives on the shards but has no device_id column: rows are placed"
            " by device (set per_shard = True for rows about the shard itself)"
        )
    # Its own fields only: other models' relations are not known while classes are built.
    relations = [f.name for f in [*meta.local_fields, *meta.local_many_to_many] if f.is_relation]
    if relations:
        raise ImproperlyConfigured(
            f"{meta.label} lives on the shards but relates to other models"
            f" ({', '.join(relations)}): keep plain ids, no foreign key crosses databases"
        )


def _check_on_build(sender: type[models.Model], **kwargs: object) -> None:
    check_shard_model(sender)


class_prepared.connect(_check_on_build, dispatch_uid="routers.silos.check_shard_model")
