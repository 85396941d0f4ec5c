"""No relation may cross databases: shard rows refer to devices by plain id."""

from django.apps import apps
from django.db import models
from django.test.utils import isolate_apps

from core.models import Device
from routers.aliases import is_shard_model


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
    with isolate_apps("shards", "core"):

        class Sneaky(models.Model):  # noqa: DJ008 - a throw-away model
            device = models.ForeignKey(Device, on_delete=models.CASCADE)

            class Meta:
                app_label = "shards"

        assert cross_database_relations([Sneaky]) == ["shards.Sneaky.device -> core.Device"]


def test_shard_models_have_no_relations_at_all():
    shard_models = [m for m in apps.get_models() if is_shard_model(m)]
    relations = [
        f"{m._meta.label}.{f.name}" for m in shard_models for f in m._meta.fields if f.is_relation
    ]
    assert relations == []
