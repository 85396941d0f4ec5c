"""Self-enrolment: a device with the fleet's provisioning key gets its own token.

A leaked fleet key must not let anyone take over an existing device, so a
serial that is already enrolled is refused unless an admin has released it
(`Device.reenroll_allowed`); re-enrolling revokes the device's old tokens.
"""

import secrets
from dataclasses import dataclass

from django.db import IntegrityError, transaction

from core.credentials import issue_token, revoke_tokens, token_digest
from core.devices import create_device
from core.models import Device, ProvisioningKey
from core.throttle_enrolment import count_enrolment, count_wrong_key, refuse_probing_client


class EnrollmentError(Exception):
    status = 400


class BadProvisioningKey(EnrollmentError):
    status = 401


class AlreadyEnrolled(EnrollmentError):
    status = 409


@dataclass(frozen=True)
class Enrollment:
    device_id: int
    token: str
    created: bool


def create_provisioning_key(name: str) -> str:
    """Make a new fleet key and return it; only its digest is kept."""
    secret = "fleet_" + secrets.token_urlsafe(32)
    ProvisioningKey.objects.create(name=name, digest=token_digest(secret))
    return secret


def provisioning_key_is_valid(key: str) -> bool:
    if not key or len(key) > 200:
        return False
    return ProvisioningKey.objects.filter(
        digest=token_digest(key), revoked_at__isnull=True
    ).exists()


def enroll(provisioning_key: str, serial: str, name: str = "", client: str = "") -> Enrollment:
    """Enrol `serial`; `client` (the caller's address) is throttled on wrong keys."""
    refuse_probing_client(client)
    if not provisioning_key_is_valid(provisioning_key):
        count_wrong_key(client)
        raise BadProvisioningKey("the provisioning key is not valid")
    count_enrolment(token_digest(provisioning_key))
    with transaction.atomic():
        device = Device.objects.select_for_update().filter(serial=serial).first()
        if device is not None:
            if not device.reenroll_allowed:
                raise AlreadyEnrolled(
                    f"serial {serial!r} is already enrolled; an admin must release it for"
                    " re-enrolment first"
                )
            revoke_tokens(device)
            device.reenroll_allowed = False
            device.save(update_fields=["reenroll_allowed"])
            return Enrollment(device.pk, issue_token(device), created=False)
    try:
        new = create_device(serial, name=name)
    except IntegrityError as exc:  # enrolled concurrently a moment ago
        raise AlreadyEnrolled(f"serial {serial!r} is already enrolled") from exc
    return Enrollment(new.device.pk, new.token, created=True)
