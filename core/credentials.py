"""Device tokens: random secrets shown once, stored only as a keyed digest.

A token reads `<key id>.<secret>`. The key id finds the one row to check, so
verification is a key lookup and a constant-time comparison of HMAC-SHA256
digests: fast enough for every request (a password hash such as PBKDF2 would
cap a node at a few requests per second), and a leaked table of digests is
useless without DEVICE_TOKEN_KEY. Key ids are random (96 bits), so nobody can
guess the next one and probe it while a device enrols; tokens issued before
carry the credential's number as their key id and keep working.

Rows are cached (core.credential_cache), so a steady-state device request does
not touch the directory; every change to a device or its credentials is
forgotten in the caches when it commits (core.models), so it bites on every
node within CREDENTIAL_LOCAL_TTL seconds.
"""

import hashlib
import hmac
import re
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.credential_cache import cached_credential
from core.models import Device, DeviceCredential

SECRET_BYTES = 32  # 256 random bits
KEY_ID_BYTES = 12  # 96 random bits: 16 characters
# ASCII only: str.isdigit() accepts digits such as '²' that int() and the database refuse.
TOKEN_FORMAT = re.compile(r"([A-Za-z0-9_-]{1,32})\.([A-Za-z0-9_-]{1,128})", re.ASCII)


def token_digest(secret: str) -> str:
    key = settings.DEVICE_TOKEN_KEY.encode()
    return hmac.new(key, secret.encode(), hashlib.sha256).hexdigest()


def new_key_id() -> str:
    return secrets.token_urlsafe(KEY_ID_BYTES)


def issue_token(device: Device) -> str:
    """Create a credential for `device` and return its token; it cannot be shown again."""
    secret = secrets.token_urlsafe(SECRET_BYTES)
    credential = DeviceCredential.objects.create(
        device=device, key_id=new_key_id(), digest=token_digest(secret)
    )
    return f"{credential.key_id}.{secret}"


def parse_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed token, else None."""
    match = TOKEN_FORMAT.fullmatch(token)
    return (match[1], match[2]) if match else None


def _load(key_id: str) -> dict | None:
    return (
        DeviceCredential.objects.filter(key_id=key_id, device__is_active=True)
        .values("device_id", "digest", "expires_at", "revoked_at")
        .first()
    )


def device_id_for_token(token: str) -> int | None:
    """The device a token belongs to, or None if it is unknown, revoked or expired."""
    parsed = parse_token(token)
    if parsed is None:
        return None
    key_id, secret = parsed
    row = cached_credential(key_id, lambda: _load(key_id))
    if row is None or not hmac.compare_digest(row["digest"], token_digest(secret)):
        return None
    expired = row["expires_at"] is not None and row["expires_at"] <= timezone.now()
    if row["revoked_at"] is not None or expired:
        return None
    return row["device_id"]


def rotate_token(device: Device, grace: timedelta | None = None) -> str:
    """Issue a new token; the current ones keep working for `grace`, then expire."""
    grace = settings.TOKEN_ROTATION_GRACE if grace is None else grace
    with transaction.atomic():
        DeviceCredential.objects.filter(
            device=device, revoked_at__isnull=True, expires_at__isnull=True
        ).update(expires_at=timezone.now() + grace)
        return issue_token(device)


def revoke_tokens(device: Device) -> int:
    """Revoke every token of a device at once; returns how many were live."""
    return DeviceCredential.objects.filter(device=device, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
