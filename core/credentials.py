"""Device tokens: random secrets shown once, stored only as a keyed digest.

A token reads `<credential id>.<secret>`. The id finds the one row to check, so
verification is a primary-key lookup and a constant-time comparison of
HMAC-SHA256 digests: fast enough for every request (a password hash such as
PBKDF2 would cap a node at a few requests per second), and a leaked table of
digests is useless without DEVICE_TOKEN_KEY.
"""

import hashlib
import hmac
import secrets

from django.conf import settings
from django.utils import timezone

from core.models import Device, DeviceCredential

SECRET_BYTES = 32  # 256 random bits


def token_digest(secret: str) -> str:
    key = settings.DEVICE_TOKEN_KEY.encode()
    return hmac.new(key, secret.encode(), hashlib.sha256).hexdigest()


def issue_token(device: Device) -> str:
    """Create a credential for `device` and return its token; it cannot be shown again."""
    secret = secrets.token_urlsafe(SECRET_BYTES)
    credential = DeviceCredential.objects.create(device=device, digest=token_digest(secret))
    return f"{credential.pk}.{secret}"


def parse_token(token: str) -> tuple[int, str] | None:
    credential_id, _, secret = token.partition(".")
    if not credential_id.isdigit() or not secret or len(token) > 200:
        return None
    return int(credential_id), secret


def device_id_for_token(token: str) -> int | None:
    """The device a token belongs to, or None if it is unknown, revoked or expired."""
    parsed = parse_token(token)
    if parsed is None:
        return None
    credential_id, secret = parsed
    row = (
        DeviceCredential.objects.filter(pk=credential_id, device__is_active=True)
        .values("device_id", "digest", "expires_at", "revoked_at")
        .first()
    )
    if row is None or not hmac.compare_digest(row["digest"], token_digest(secret)):
        return None
    expired = row["expires_at"] is not None and row["expires_at"] <= timezone.now()
    if row["revoked_at"] is not None or expired:
        return None
    return row["device_id"]
