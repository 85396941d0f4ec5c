"""Who may see and command a device: one rule for the API, the portal and the admin.

A user sees the devices granted to them (DeviceAccess) and commands those granted
with `can_command`; Django's permissions widen that to every device:
`core.view_device` sees every device (readings, series, commands, exports) and
`core.command_device` sends and cancels commands on every device. Superusers have
every permission. Being staff grants nothing by itself: it opens the admin's door,
and the admin asks for the same permissions.

A device a user may not see is answered as if it did not exist, so ids tell a
stranger nothing; one they see but may not command is refused as such.
"""

from django.contrib.auth.models import AnonymousUser
from django.db.models import QuerySet

from core.models import Device, DeviceAccess, User

VIEW_EVERY_DEVICE = "core.view_device"
COMMAND_EVERY_DEVICE = "core.command_device"


class DeviceNotVisible(Exception):
    """No such device, as far as this user may know (answer 404)."""


class CommandNotAllowed(Exception):
    """The user sees the device but may not command it (answer 403)."""


def sees_every_device(user: User | AnonymousUser) -> bool:
    return user.is_active and user.has_perm(VIEW_EVERY_DEVICE)


def visible_devices(user: User | AnonymousUser) -> QuerySet[Device]:
    """The active devices this user may see."""
    devices = Device.objects.filter(is_active=True)
    if not user.is_authenticated or not user.is_active:
        return devices.none()
    if sees_every_device(user):
        return devices
    return devices.filter(deviceaccess__user=user)


def may_command(user: User | AnonymousUser, device: Device) -> bool:
    if not user.is_authenticated or not user.is_active:
        return False
    if user.has_perm(COMMAND_EVERY_DEVICE):
        return True
    return DeviceAccess.objects.filter(device=device, user=user, can_command=True).exists()


def device_for_user(
    user: User | AnonymousUser, device_id: int, *, to_command: bool = False
) -> Device:
    """The device if the user may see it (and command it, when asked), else an exception."""
    device = visible_devices(user).filter(pk=device_id).first()
    if device is None:
        raise DeviceNotVisible("no such device")
    if to_command and not may_command(user, device):
        raise CommandNotAllowed("you may see this device but not command it")
    return device
