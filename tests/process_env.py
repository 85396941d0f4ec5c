"""Environment for processes a test starts (manage.py, Celery workers).

They must use the test directory, the test cache and the test broker, not the
running local cluster's.
"""

import os

from django.conf import settings
from django.db import connections


def child_process_env() -> dict[str, str]:
    directory = connections.settings["default"]
    url = (
        f"postgres://{directory['USER']}:{directory['PASSWORD']}@{directory['HOST']}:"
        f"{directory['PORT']}/{directory['NAME']}"
    )
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "core.settings",
        "DIRECTORY_DATABASE_URL": url,
        "REDIS_URL": settings.CACHES["default"]["LOCATION"],
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
    }
