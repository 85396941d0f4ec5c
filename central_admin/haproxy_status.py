"""The load balancers' view of the app nodes, read from each HAProxy's stats CSV.

Read with the haproxy-stats library, every balancer at once; a stats page that
cannot be reached (or answers garbage) is that balancer's `error`, never an
exception for the page to die of.
"""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from haproxystats import HAProxyServer

TIMEOUT_SECONDS = 2


@dataclass
class ServerRow:
    backend: str
    name: str
    status: str
    sessions: Any
    errors_5xx: Any
    check_status: str
    last_check: str
    last_change_s: Any
    downtime_s: Any
    checks_down: Any
    address: str


@dataclass
class HAProxyStatus:
    address: str
    servers: list[ServerRow] = field(default_factory=list)
    error: str = ""


def _field(service: Any, name: str, default: Any = "") -> Any:
    value = getattr(service, name, default)
    return default if value is None else value


def stats_addresses() -> list[str]:
    """Every balancer's stats address: HAPROXY_STATS_ADDRESSES, or else the one
    HAPROXY_STATS_ADDRESS (a single balancer, the local cluster)."""
    return list(settings.HAPROXY_STATS_ADDRESSES) or [settings.HAPROXY_STATS_ADDRESS]


def read_all_haproxy() -> list[HAProxyStatus]:
    """One status per balancer, in the settings' order, read at the same time: a dead
    balancer costs its timeout once, not once per balancer."""
    addresses = stats_addresses()
    with ThreadPoolExecutor(max_workers=len(addresses), thread_name_prefix="haproxy") as pool:
        return list(pool.map(_read_or_error, addresses))


def _read_or_error(address: str) -> HAProxyStatus:
    try:
        return read_haproxy(address)
    except Exception as exc:  # a stats page answering rows the library cannot read
        return HAProxyStatus(address, error=f"unreadable: {exc!r}")


def read_haproxy(address: str | None = None) -> HAProxyStatus:
    """One balancer's status (by default the first one's)."""
    address = address or stats_addresses()[0]
    status = HAProxyStatus(address)
    try:
        stats = HAProxyServer(
            address,
            user=settings.HAPROXY_STATS_USER,
            password=settings.HAPROXY_STATS_PASSWORD,
            timeout=TIMEOUT_SECONDS,
        )
    except Exception as exc:  # the library parses whatever came back; bad answers raise
        status.error = f"unreachable: {exc!r}"
        return status
    if stats.failed:
        status.error = "unreachable: no stats from HAProxy (refused, timed out or login failed)"
        return status
    for backend in stats.backends:
        for server in backend.listeners:
            status.servers.append(
                ServerRow(
                    backend=backend.name,
                    name=server.name,
                    status=str(_field(server, "status")),
                    sessions=_field(server, "scur"),
                    errors_5xx=_field(server, "hrsp_5xx"),
                    check_status=str(_field(server, "check_status")),
                    last_check=str(_field(server, "last_chk")),
                    last_change_s=_field(server, "lastchg"),
                    downtime_s=_field(server, "downtime"),
                    checks_down=_field(server, "chkdown"),
                    address=str(_field(server, "addr")),
                )
            )
    return status
