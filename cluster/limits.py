"""The request limits HAProxy and the uWSGI nodes enforce in front of Django.

The body limit is Django's own (`UPLOAD_MAX_BYTES`, read by core/settings.py), taken
from the settings module itself, so the edge and the app can never disagree on it.
Reading a module's attribute configures nothing: this tool still never sets Django up.
"""

import importlib

# Connections one client address may hold open at HAProxy at once. On loopback every
# client is 127.0.0.1 (load tests included), so the local cluster's limit is generous;
# it still keeps one address from taking all of HAProxy's `maxconn`.
CLIENT_MAXCONN = 1000


def upload_max_bytes() -> int:
    """Largest request body the app accepts (Django's DATA_UPLOAD_MAX_MEMORY_SIZE)."""
    settings = importlib.import_module("core.settings")
    return int(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)


def haproxy_bufsize(body_limit: int) -> int:
    """HAProxy's buffer size: a whole request (headers up to uWSGI's 32 KiB and a body at
    the limit) fits in one buffer, so HAProxy can hold it until it has all arrived."""
    return body_limit + 64 * 1024
