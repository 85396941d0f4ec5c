"""Which devices a web user may see and command: their own, or all of them for staff.

Anything else is answered as if it did not exist (404), so ids leak nothing.
"""

from django.db.models import QuerySet
from ninja.errors import HttpError

from core.models import Device, DeviceAccess, User


def visible_devices(user: User) -> QuerySet[Device]:
    devices = Device.objects.filter(is_active=True)
    if user.is_staff:
        return devices
    return devices.filter(deviceaccess__user=user)


def may_command(user: User, device: Device) -> bool:
    if user.is_staff:
        return True
    return DeviceAccess.objects.filter(device=device, user=user, can_command=True).exists()


def device_for_user(user: User, device_id: int, *, to_command: bool = False) -> Device:
    device = visible_devices(user).filter(pk=device_id).first()
    if device is None:
        raise HttpError(404, "no such device")
    if to_command and not may_command(user, device):
        raise HttpError(403, "you may see this device but not command it")
    return device
