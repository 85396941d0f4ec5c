"""Loopback port helpers, shared by the cluster tool and the test harness."""

import socket

from core.local_cluster import HOST


def free_port(host: str = HOST) -> int:
    """Return a port that is free on `host` right now (the kernel picks it).

    There is an unavoidable race until the caller binds it; good enough for tests.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port.

    Connecting (rather than test-binding) also catches servers bound to 0.0.0.0 and
    ignores sockets lingering in TIME_WAIT.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def bindable(port: int, host: str = HOST) -> bool:
    """True when a listener could bind host:port now.

    port_in_use() misses a client socket whose local port it is (ports in the
    kernel's ephemeral range are handed to outgoing connections); PostgreSQL's
    bind would then fail. SO_REUSEADDR, as servers set it, ignores TIME_WAIT.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
