"""Test settings: the real settings plus two static shard aliases for Django's test runner.

Django creates a `test_` database for every alias in DATABASES before the
session, so the two local shard instances get test databases of their own and
the router's allow_migrate puts only shard tables on them. A third shard is
registered at run time by the tests themselves, exactly as in production.
"""

from core import local_cluster
from core.settings import *  # noqa: F403
from core.settings import CACHES, DATABASES

for _alias, (_port, _db_name) in local_cluster.SHARDS.items():
    DATABASES[_alias] = {
        **DATABASES["default"],
        "NAME": _db_name,
        "PORT": str(_port),
        "TEST": {"NAME": f"test_{_db_name}"},
    }

# Redis database 1: tests never touch the running cluster's cache (database 0).
CACHES["default"]["LOCATION"] = local_cluster.redis_url(1)
CACHES["default"]["KEY_PREFIX"] = "fleet-test"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CELERY_BROKER_URL = local_cluster.redis_url(3)
