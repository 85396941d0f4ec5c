"""Each device's request rate: one Redis round trip on every authenticated device request.

A device (or whoever holds its token) that sends more than DEVICE_RATE_LIMIT
requests gets 429 with Retry-After; other devices are not slowed. Counted per
device, not per address, so a fleet behind one NAT address is not one client.

Requests on the device API without a valid token are counted per client address
(DEVICE_AUTH_FAILURE_LIMIT): a prober of random tokens, each of which costs a
directory lookup, is turned away with 429; devices with valid tokens never are.
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


def count_failed_authentication(client: str) -> None:
    """Count a device request without a valid token; Throttled when the client is over."""
    wait = hit(settings.DEVICE_AUTH_FAILURE_LIMIT, "device-auth-failures", client)
    if wait is not None:
        raise Throttled(
            f"too many requests without a valid device token from this address; retry in {wait} s",
            wait,
        )
