"""Test settings: the real settings plus two static shard aliases for Django's test runner.

Django creates a `test_` database for every alias in DATABASES before the
session, so the two local shard instances get test databases of their own and
the router's allow_migrate puts only shard tables on them. A third shard is
registered at run time by the tests themselves, exactly as in production.
"""

import os

from core import local_cluster
from core.settings import *  # noqa: F403
from core.settings import CACHES, DATABASES

# Two test runs on one machine (say, two checkouts) each set their own suffix and
# Redis databases so they never share test databases, cache or queue.
SUFFIX = os.environ.get("FLEET_TEST_DB_SUFFIX", "")
DATABASES["default"]["TEST"] = {"NAME": f"test_{local_cluster.DIRECTORY_DB}{SUFFIX}"}

for _alias, (_port, _db_name) in local_cluster.SHARDS.items():
    DATABASES[_alias] = {
        **DATABASES["default"],
        "NAME": _db_name,
        "PORT": str(local_cluster.client_port(_port)),
        "TEST": {"NAME": f"test_{_db_name}{SUFFIX}"},
    }

# Redis database 1: tests never touch the running cluster's cache (database 0). The key
# prefix stays the real one, so processes the tests start (tests.process_env) share it.
CACHES["default"]["LOCATION"] = local_cluster.redis_url(
    int(os.environ.get("FLEET_TEST_REDIS_DB", "1"))
)
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CELERY_BROKER_URL = local_cluster.redis_url(int(os.environ.get("FLEET_TEST_BROKER_DB", "3")))
