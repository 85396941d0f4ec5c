"""Token rotation, revocation and fleet keys, as the ops commands drive them."""

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from core.credentials import device_id_for_token, rotate_token
from core.models import Device
from core.provisioning import provisioning_key_is_valid
from tests.factories import make_device


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_rotation_keeps_the_old_token_for_the_grace_period(shards):
    new = make_device()
    fresh = rotate_token(new.device, grace=timedelta(hours=1))
    assert device_id_for_token(fresh) == new.device.pk
    assert device_id_for_token(new.token) == new.device.pk  # still within grace

    newest = rotate_token(new.device, grace=timedelta(0))
    assert device_id_for_token(newest) == new.device.pk
    assert device_id_for_token(fresh) is None  # its grace was zero
    assert device_id_for_token(new.token) == new.device.pk  # its own grace still runs


def test_device_credentials_command(shards):
    new = make_device()
    serial = new.device.serial
    out = run("device_credentials", "rotate", serial)
    rotated = out.split("new token: ")[1].split()[0]
    assert device_id_for_token(rotated) == new.device.pk

    assert "revoked 2 token(s)" in run("device_credentials", "revoke", serial)
    assert device_id_for_token(rotated) is None and device_id_for_token(new.token) is None

    run("device_credentials", "release", serial)
    assert Device.objects.get(serial=serial).reenroll_allowed
    with pytest.raises(CommandError, match="no device"):
        run("device_credentials", "revoke", "no-such-serial")


def test_provisioning_key_command(shards):
    key = json.loads(run("provisioning_key", "create", "factory", "--json"))["provisioning_key"]
    assert provisioning_key_is_valid(key)
    with pytest.raises(CommandError, match="exists already"):
        run("provisioning_key", "create", "factory")
    run("provisioning_key", "revoke", "factory")
    assert not provisioning_key_is_valid(key)
    assert "factory  revoked" in run("provisioning_key", "list")

    chosen = "a-key-chosen-by-ops-0123456789"
    run("provisioning_key", "set", "ops", chosen)
    assert provisioning_key_is_valid(chosen)
    with pytest.raises(CommandError, match="at least 20"):
        run("provisioning_key", "set", "ops", "short")
