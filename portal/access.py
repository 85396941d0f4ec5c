"""The portal's answers to core.access: a device the user may not see is a 404, never a 403.

So ids tell a stranger nothing. A device the user sees but may not command is a
403: they already know it exists, and "not allowed" is the honest answer.
"""

from django.core.exceptions import PermissionDenied
from django.http import Http404

from core.access import CommandNotAllowed, DeviceNotVisible, device_for_user
from core.models import Device, User


def device_or_404(user: User, device_id: int) -> Device:
    try:
        return device_for_user(user, device_id)
    except DeviceNotVisible:
        raise Http404("no such device") from None


def commandable_device_or_404(user: User, device_id: int) -> Device:
    """The device, if the user may command it; 404 if unseen, 403 if seen but not commandable."""
    try:
        return device_for_user(user, device_id, to_command=True)
    except DeviceNotVisible:
        raise Http404("no such device") from None
    except CommandNotAllowed as exc:
        raise PermissionDenied(str(exc)) from None
