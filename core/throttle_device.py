"""Each device's request rate: one Redis round trip on every authenticated device request.

A device (or whoever holds its token) that sends more than DEVICE_RATE_LIMIT
requests gets 429 with Retry-After; other devices are not slowed. Counted per
device, not per address, so a fleet behind one NAT address is not one client.
"""

from django.conf import settings

from core.throttle import Throttled, hit


def limit_device_requests(device_id: int) -> None:
    """Count this request for the device; Throttled when it is over its rate."""
    wait = hit(settings.DEVICE_RATE_LIMIT, "device", str(device_id))
    if wait is not None:
        raise Throttled(
            f"too many requests from this device (limit {settings.DEVICE_RATE_LIMIT});"
            f" retry in {wait} s",
            wait,
        )
