"""The load balancer's view of the app nodes, read from HAProxy's stats CSV.

Read with the haproxy-stats library; a stats page that cannot be reached (or
answers garbage) is an `error`, never an exception for the page to die of.
"""

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


def read_haproxy() -> HAProxyStatus:
    address = settings.HAPROXY_STATS_ADDRESS
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
