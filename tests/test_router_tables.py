"""The router's answers as tables: read, write, migrate and relation, for every model."""

import pytest
from django.apps import apps
from django.db import router

from core.models import Device, Shard, User
from routers.db_router import ShardRouter
from routers.errors import MissingDeviceContext
from routers.silos import shard_models
from shards.models import Command, Reading, Upload

SHARD_MODELS = set(shard_models())
DIRECTORY_MODELS = set(apps.get_models()) - SHARD_MODELS


def test_model_families_follow_the_declaration():
    """A model's family is its declaration (routers.silos.ShardModel), and apps do not mix."""
    assert {Reading, Upload, Command} <= SHARD_MODELS
    assert {User, Device, Shard} <= DIRECTORY_MODELS
    assert {m._meta.app_label for m in SHARD_MODELS} == {"shards"}
    assert all(m._meta.app_label != "shards" for m in DIRECTORY_MODELS)


@pytest.mark.parametrize("model", sorted(DIRECTORY_MODELS, key=str), ids=str)
def test_directory_models_read_and_write_the_directory(model):
    assert router.db_for_read(model) == "default"
    assert router.db_for_write(model) == "default"


@pytest.mark.parametrize("model", sorted(SHARD_MODELS, key=str), ids=str)
@pytest.mark.parametrize("operation", ["db_for_read", "db_for_write"])
def test_shard_models_without_context_raise(model, operation):
    with pytest.raises(MissingDeviceContext, match=model.__name__):
        getattr(router, operation)(model)


@pytest.mark.parametrize("model", sorted(SHARD_MODELS - {Reading}, key=str), ids=str)
def test_instance_hint_loaded_from_a_shard_keeps_that_shard(model):
    instance = model()
    instance._state.db = "shard_2"
    assert router.db_for_write(model, instance=instance) == "shard_2"


def test_instance_hint_with_device_id_goes_to_the_devices_shard(shards):
    from tests.factories import make_device

    on_1 = make_device(shard="shard_1").device
    on_2 = make_device(shard="shard_2").device
    table = [
        (Reading(device_id=on_1.pk), "shard_1"),
        (Reading(device_id=on_2.pk), "shard_2"),
        (Command(device_id=on_2.pk), "shard_2"),
        (Upload(device_id=on_1.pk), "shard_1"),
    ]
    for instance, expected in table:
        assert router.db_for_write(type(instance), instance=instance) == expected
        assert router.db_for_read(type(instance), instance=instance) == expected


ALIASES = ["default", "shard_1", "shard_2", "shard_99"]


@pytest.mark.parametrize("model", sorted(apps.get_models(), key=str), ids=str)
def test_allow_migrate_table(model):
    expected = {alias: (alias != "default") == (model in SHARD_MODELS) for alias in ALIASES}
    actual = {alias: router.allow_migrate_model(alias, model) for alias in ALIASES}
    assert actual == expected


def test_allow_relation_table():
    def at(instance, alias):
        instance._state.db = alias
        return instance

    relation = ShardRouter().allow_relation
    table = [
        # (obj1, obj2, expected): None means "no opinion", Django then allows same-db only.
        (at(User(), "default"), at(Device(), "default"), None),
        (at(Device(), "default"), at(Reading(), "shard_1"), False),
        (at(Reading(), "shard_1"), at(Device(), "default"), False),
        (at(Reading(), "shard_1"), at(Upload(), "shard_1"), True),
        (at(Reading(), "shard_1"), at(Upload(), "shard_2"), False),
    ]
    for obj1, obj2, expected in table:
        assert relation(obj1, obj2) is expected, (obj1, obj2)
