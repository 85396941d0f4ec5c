"""No relation may cross databases: shard rows refer to devices by plain id."""

import pytest
from django.apps import apps
from django.db import models
from django.test.utils import isolate_apps

from core.models import Device
from routers.silos import is_shard_model, shard_models


def cross_database_relations(all_models) -> list[str]:
    """Every relation whose two ends live in different database families."""
    found = []
    for model in all_models:
        for field in model._meta.get_fields(include_hidden=True):
            related = getattr(field, "related_model", None)
            if not field.is_relation or related is None or isinstance(related, str):
                continue
            if is_shard_model(model) != is_shard_model(related):
                found.append(f"{model._meta.label}.{field.name} -> {related._meta.label}")
    return found


def test_no_model_relates_across_databases():
    assert cross_database_relations(apps.get_models(include_auto_created=True)) == []


def test_the_walk_finds_a_cross_database_foreign_key():
    """A shard model cannot even be built with one (below); a directory model can."""
    from shards.models import Upload

    with isolate_apps("shards", "core"):

        class Sneaky(models.Model):  # noqa: DJ008 - a throw-away model
            upload = models.ForeignKey(Upload, on_delete=models.CASCADE)

            class Meta:
                app_label = "core"

        assert cross_database_relations([Sneaky]) == ["core.Sneaky.upload -> shards.Upload"]


def test_shard_models_have_no_relations_at_all():
    relations = [
        f"{m._meta.label}.{f.name}" for m in shard_models() for f in m._meta.fields if f.is_relation
    ]
    assert relations == []


def test_a_shard_model_is_checked_as_its_class_is_built():
    from django.core.exceptions import ImproperlyConfigured

    from routers.silos import ShardModel

    with isolate_apps("shards"):
        with pytest.raises(ImproperlyConfigured, match="no device_id column"):

            class NoDevice(ShardModel):
                name = models.CharField(max_length=10)

                class Meta:
                    app_label = "shards"

        with pytest.raises(ImproperlyConfigured, match="relates to other models"):

            class Related(ShardModel):
                device_id = models.BigIntegerField()
                device = models.ForeignKey(Device, on_delete=models.CASCADE)

                class Meta:
                    app_label = "shards"

        with pytest.raises(ImproperlyConfigured, match="not a ShardQuerySet"):

            class PlainManager(ShardModel):
                device_id = models.BigIntegerField()
                objects = models.Manager()

                class Meta:
                    app_label = "shards"

        class PerShard(ShardModel):
            per_shard = True
            name = models.CharField(max_length=10)

            class Meta:
                app_label = "shards"
