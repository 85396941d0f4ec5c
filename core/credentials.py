"""Device tokens: random secrets shown once, stored only as a keyed digest.

A token reads `<credential id>.<secret>`. The id finds the one row to check, so
verification is a key lookup and a constant-time comparison of HMAC-SHA256
digests: fast enough for every request (a password hash such as PBKDF2 would
cap a node at a few requests per second), and a leaked table of digests is
useless without DEVICE_TOKEN_KEY.

Credential rows are cached in the process (CREDENTIAL_LOCAL_TTL) and in Redis,
so a steady-state device request does not touch the directory. Revoking or
rotating drops the cached rows here and in Redis; other processes' local copies
expire within CREDENTIAL_LOCAL_TTL seconds.
"""

import hashlib
import hmac
import secrets
from datetime import timedelta

from django.conf import settings
from django.core.cache import caches
from django.db import transaction
from django.utils import timezone

from core.models import Device, DeviceCredential

SECRET_BYTES = 32  # 256 random bits
MAX_TOKEN_LENGTH = 200
_UNKNOWN = "unknown"  # cached answer for ids that do not exist, so bad tokens cost no query


def token_digest(secret: str) -> str:
    key = settings.DEVICE_TOKEN_KEY.encode()
    return hmac.new(key, secret.encode(), hashlib.sha256).hexdigest()


def _key(credential_id: int) -> str:
    return f"credential:{credential_id}"


def issue_token(device: Device) -> str:
    """Create a credential for `device` and return its token; it cannot be shown again."""
    secret = secrets.token_urlsafe(SECRET_BYTES)
    credential = DeviceCredential.objects.create(device=device, digest=token_digest(secret))
    forget_credential(credential.pk)
    return f"{credential.pk}.{secret}"


def parse_token(token: str) -> tuple[int, str] | None:
    if len(token) > MAX_TOKEN_LENGTH:
        return None
    credential_id, _, secret = token.partition(".")
    if not credential_id.isdigit() or len(credential_id) > 18 or not secret:
        return None
    return int(credential_id), secret


def _load(credential_id: int) -> dict | None:
    key = _key(credential_id)
    row = caches["local"].get(key)
    if row is None:
        row = caches["default"].get(key)
        if row is None:
            found = (
                DeviceCredential.objects.filter(pk=credential_id, device__is_active=True)
                .values("device_id", "digest", "expires_at", "revoked_at")
                .first()
            )
            row = found or _UNKNOWN
            caches["default"].set(key, row, settings.CREDENTIAL_REDIS_TTL)
        caches["local"].set(key, row, settings.CREDENTIAL_LOCAL_TTL)
    return None if row == _UNKNOWN else row


def device_id_for_token(token: str) -> int | None:
    """The device a token belongs to, or None if it is unknown, revoked or expired."""
    parsed = parse_token(token)
    if parsed is None:
        return None
    credential_id, secret = parsed
    row = _load(credential_id)
    if row is None or not hmac.compare_digest(row["digest"], token_digest(secret)):
        return None
    expired = row["expires_at"] is not None and row["expires_at"] <= timezone.now()
    if row["revoked_at"] is not None or expired:
        return None
    return row["device_id"]


def forget_credential(credential_id: int) -> None:
    caches["local"].delete(_key(credential_id))
    caches["default"].delete(_key(credential_id))


def forget_device_credentials(device: Device) -> None:
    """Drop cached credentials of a device (after revoking, or deactivating it)."""
    for credential_id in device.credentials.values_list("pk", flat=True):
        forget_credential(credential_id)


def rotate_token(device: Device, grace: timedelta | None = None) -> str:
    """Issue a new token; the current ones keep working for `grace`, then expire."""
    grace = settings.TOKEN_ROTATION_GRACE if grace is None else grace
    with transaction.atomic():
        DeviceCredential.objects.filter(
            device=device, revoked_at__isnull=True, expires_at__isnull=True
        ).update(expires_at=timezone.now() + grace)
        token = issue_token(device)
    forget_device_credentials(device)
    return token


def revoke_tokens(device: Device) -> int:
    """Revoke every token of a device at once; returns how many were live."""
    count = DeviceCredential.objects.filter(device=device, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    forget_device_credentials(device)
    return count
