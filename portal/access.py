"""Which device a portal request may touch, as the JSON API decides it (api.access).

A device the user may not see is a 404, never a 403, so ids tell a stranger
nothing. A device the user sees but may not command is a 403: they already know
it exists, and "not allowed" is the honest answer.
"""

from django.core.exceptions import PermissionDenied
from django.http import Http404

from api.access import may_command, visible_devices
from core.models import Device, User


def device_or_404(user: User, device_id: int) -> Device:
    device = visible_devices(user).filter(pk=device_id).first()
    if device is None:
        raise Http404("no such device")
    return device


def commandable_device_or_404(user: User, device_id: int) -> Device:
    """The device, if the user may command it; 404 if unseen, 403 if seen but not commandable."""
    device = device_or_404(user, device_id)
    if not may_command(user, device):
        raise PermissionDenied("you may see this device but not command it")
    return device
