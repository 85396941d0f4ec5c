"""The address of the client behind a request, as far as it can be trusted.

Requests reach the app nodes through HAProxy, whose `option forwardfor` appends
the address it saw to X-Forwarded-For. Anything before that last entry was
written by the client and proves nothing, and a client that talks to a node
directly can write the whole header. So the last entry counts only when the
request came from a proxy we trust (TRUSTED_PROXIES); otherwise the peer
address itself is the client. Login lockouts, enrolment throttling and the
/readyz allowance all key on this one answer.
"""

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

from django.conf import settings
from django.http import HttpRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=32)
def networks(spec: tuple[str, ...]) -> tuple[Network, ...]:
    """('127.0.0.0/8', '::1') -> networks; a bare address is a network of one."""
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in spec if item.strip())


def parse_address(text: str) -> IPAddress | None:
    """An IP address, IPv4-mapped IPv6 folded to IPv4; None for anything else."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def address_in(text: str, spec: Iterable[str]) -> bool:
    """Whether `text` is an address inside one of the networks listed in `spec`."""
    address = parse_address(text)
    return address is not None and any(address in net for net in networks(tuple(spec)))


def client_ip(request: HttpRequest) -> str:
    """The client's address: the proxy's last X-Forwarded-For entry, or the peer's own."""
    peer = request.META.get("REMOTE_ADDR", "")
    if not address_in(peer, settings.TRUSTED_PROXIES):
        return peer
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    last = parse_address(forwarded.rsplit(",", 1)[-1])
    return str(last) if last is not None else peer
