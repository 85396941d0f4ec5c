"""Django settings for the fleet cluster.

Every value comes from an environment variable; the defaults point at the
local cluster that `make up` starts (see core/local_cluster.py), so nothing
secret is committed and a fresh checkout runs without configuration.

Only the directory database is configured here. Shard connections are not
settings: they are read from the shard registry at run time (routers/).
"""

import os
from datetime import timedelta

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from core import local_cluster


def env_bool(name: str, default: bool) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


BASE_DIR = local_cluster.REPO_ROOT

# Off unless asked for: DEBUG pages show settings and tracebacks to whoever asks.
DEBUG = env_bool("DJANGO_DEBUG", False)
# Production sets its own key; the local cluster generates one at `make up` (var/).
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or local_cluster.secret_key()
if not SECRET_KEY:
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY is not set (and there is no local cluster: `make up` makes one)"
    )

ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "core",
    "routers",
    "shards",
    "central_admin",
    "portal",
    "api",
    "ninja",
    "axes",
]

MIDDLEWARE = [
    "core.request_log.RequestLogMiddleware",
    "core.request_guard.RequestGuardMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "core.throttle_login.ClientLoginThrottleMiddleware",
    # Last, as django-axes asks: turns a lockout into its answer.
    "axes.middleware.AxesMiddleware",
]

# django-axes first: it refuses a locked-out login before any password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "core.urls"
WSGI_APPLICATION = "core.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# The directory: users, devices, credentials, placement and the shard registry.
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DIRECTORY_DATABASE_URL", local_cluster.directory_url()),
        conn_max_age=int(os.environ.get("DB_CONN_MAX_AGE", "60")),
        conn_health_checks=True,
        # Django's PostgreSQL backend with a health check that polls the socket instead
        # of a SELECT 1 round trip per request; shards inherit it (routers/registry.py).
        engine="core.postgres",
    ),
}
# Every database is reached through PgBouncer in transaction mode, where a server-side
# cursor would outlive the transaction (and so the server connection) it was made in.
DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True
DATABASE_ROUTERS = ["routers.db_router.ShardRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Shards inherit the directory's user and password unless the registry names others.
SHARD_DEFAULT_USER = os.environ.get("SHARD_DEFAULT_USER", DATABASES["default"].get("USER", ""))
SHARD_DEFAULT_PASSWORD = os.environ.get(
    "SHARD_DEFAULT_PASSWORD", DATABASES["default"].get("PASSWORD", "")
)
# How long a process trusts its copy of the shard registry before re-reading it.
SHARD_REGISTRY_TTL = float(os.environ.get("SHARD_REGISTRY_TTL", "5"))
# In-process placement cache lifetime; a stale entry is caught by the shard's fence.
PLACEMENT_LOCAL_TTL = float(os.environ.get("PLACEMENT_LOCAL_TTL", "30"))
PLACEMENT_REDIS_TTL = int(os.environ.get("PLACEMENT_REDIS_TTL", "3600"))
# How long a write waits for a device that a move has fenced before giving up (503).
FENCE_WAIT_SECONDS = float(os.environ.get("FENCE_WAIT_SECONDS", "20"))
# A moved device's rows stay on its old shard this long before cleanup removes them
# (readers and writers follow the fences, so no cache lifetime depends on it).
MOVE_CLEANUP_GRACE_SECONDS = float(os.environ.get("MOVE_CLEANUP_GRACE_SECONDS", "120"))
# Test hook for crash injection: the mover kills itself (SIGKILL) after this phase.
MOVE_CRASH_AFTER = os.environ.get("FLEET_MOVE_CRASH_AFTER", "")
# Threads used to query shards in parallel for cross-shard reads.
FANOUT_MAX_WORKERS = int(os.environ.get("FANOUT_MAX_WORKERS", "8"))

AUTH_USER_MODEL = "core.User"

REDIS_URL = os.environ.get("REDIS_URL", local_cluster.redis_url(0))
CACHES = {
    # Shared across every node: placement and credentials, invalidated explicitly.
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "fleet",
        "OPTIONS": {
            "SOCKET_CONNECT_TIMEOUT": 0.5,
            "SOCKET_TIMEOUT": 0.5,
        },
    },
    # Per process: spares even the Redis round trip on the hot path.
    "local": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "fleet-local",
        "OPTIONS": {"MAX_ENTRIES": 100_000},
    },
}
# Redis being down must not take requests down: the cache then misses and logs.
DJANGO_REDIS_IGNORE_EXCEPTIONS = True
DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True

# A keyed hash for device tokens: fast enough for every request, useless if leaked.
DEVICE_TOKEN_KEY = os.environ.get("DEVICE_TOKEN_KEY", SECRET_KEY)
# How long other processes may still accept a revoked token (their local cache): a change
# to a device or its credentials must bite on every node within 2 s (core.checks).
CREDENTIAL_LOCAL_TTL = float(os.environ.get("CREDENTIAL_LOCAL_TTL", "1"))
CREDENTIAL_REDIS_TTL = int(os.environ.get("CREDENTIAL_REDIS_TTL", "300"))
# After rotation the old token keeps working this long, so devices can pick up the new one.
TOKEN_ROTATION_GRACE = timedelta(hours=float(os.environ.get("TOKEN_ROTATION_GRACE_HOURS", "24")))

# Celery: Redis broker. A task is acknowledged only after it ran, and a worker
# that dies mid-task hands it back, so imports are at-least-once and idempotent.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", local_cluster.redis_url(2))
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's Django fixup closes every database connection before and after each task
# unless this is set (then only every so many tasks); core/celery.py closes them as
# Django's request cycle does instead: when unusable or older than CONN_MAX_AGE.
CELERY_DB_REUSE_MAX = 10**9
CELERY_TASK_DEFAULT_QUEUE = "fleet"
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# How often beat kicks an import of every shard: the longest an upload whose kick was
# lost (Redis down at staging, a move copied it) waits for its import.
IMPORT_KICK_SECONDS = float(os.environ.get("IMPORT_KICK_SECONDS", "5"))
# Staged uploads one import transaction claims; how long one import task works a shard
# before it queues its successor, so that other shards' imports get their turn on a busy
# worker; and how long it lets uploads gather after a claim that was not full. Without
# that pause a task under load claimed one or two uploads at a time, and paid a claim's
# fixed cost for each (docs/benchmarks.md: 254 -> 321 uploads/s with it).
IMPORT_BATCH_UPLOADS = int(os.environ.get("IMPORT_BATCH_UPLOADS", "200"))
# At most this many readings a claim (about 0.15 s of import here): a claim holds its
# devices' fences until it commits, and a move starting meanwhile waits for it.
IMPORT_CLAIM_READINGS = int(os.environ.get("IMPORT_CLAIM_READINGS", "20000"))
IMPORT_BUDGET_SECONDS = float(os.environ.get("IMPORT_BUDGET_SECONDS", "2"))
IMPORT_PAUSE_SECONDS = float(os.environ.get("IMPORT_PAUSE_SECONDS", "0.05"))
# How often beat queues an analysis run of every shard (shards.analysis.run).
ANALYSIS_INTERVAL_SECONDS = float(os.environ.get("ANALYSIS_INTERVAL_SECONDS", "30"))
# celery beat: kick lost imports; a tick not started within its period is dropped.
CELERY_BEAT_SCHEDULE = {
    "kick-all-imports": {
        "task": "shards.tasks.kick_all_imports",
        "schedule": IMPORT_KICK_SECONDS,
        "options": {"expires": IMPORT_KICK_SECONDS},
    },
    "clean-up-moved-devices": {
        "task": "shards.tasks.clean_up_moved_devices",
        "schedule": 60.0,
        "options": {"expires": 60},
    },
    # Removes deleted devices' rows from shards where a task did not (shard down, task lost).
    "purge-deleted-devices": {
        "task": "shards.tasks.purge_pending_deletions",
        "schedule": 60.0,
        "options": {"expires": 60},
    },
    # Queues one analyse_shard per serving shard; a run not started in time is dropped.
    "analyse-all-shards": {
        "task": "shards.tasks.analyse_all_shards",
        "schedule": ANALYSIS_INTERVAL_SECONDS,
        "options": {"expires": ANALYSIS_INTERVAL_SECONDS},
    },
}

# Commands: default lifetime, when an unacknowledged one is sent again, how many per answer.
COMMAND_DEFAULT_EXPIRY = int(os.environ.get("COMMAND_DEFAULT_EXPIRY", str(24 * 3600)))
COMMAND_REDELIVER_AFTER = int(os.environ.get("COMMAND_REDELIVER_AFTER", "300"))
COMMAND_DELIVERY_BATCH = 50

# Upload limits (documented in the API): readings per batch, body size, clock skew.
UPLOAD_MAX_READINGS = int(os.environ.get("UPLOAD_MAX_READINGS", "5000"))
DATA_UPLOAD_MAX_MEMORY_SIZE = int(os.environ.get("UPLOAD_MAX_BYTES", str(2 * 1024 * 1024)))
READING_MAX_FUTURE_SECONDS = int(os.environ.get("READING_MAX_FUTURE_SECONDS", "86400"))
# A device silent for longer than this is shown offline.
DEVICE_OFFLINE_AFTER = int(os.environ.get("DEVICE_OFFLINE_AFTER", "300"))
# Analysis: the report interval of devices that set none (silent for longer: an offline
# alert), and how long imported raw uploads are kept (their readings stay).
DEVICE_REPORT_INTERVAL = int(os.environ.get("DEVICE_REPORT_INTERVAL", "300"))
UPLOAD_RETENTION_DAYS = float(os.environ.get("UPLOAD_RETENTION_DAYS", "7"))

# --- Throttling, lockouts and who may read /readyz (docs/security.md) -------------------
# Peers whose last X-Forwarded-For entry names the client (HAProxy); core/client_ip.py.
TRUSTED_PROXIES = env_list("TRUSTED_PROXIES", "127.0.0.1,::1")
# Clients (by that address) that may read /readyz; staff users may read it from anywhere.
READYZ_ALLOWED_NETWORKS = env_list("READYZ_ALLOWED_NETWORKS", "127.0.0.0/8,::1")
# Rate limits ("N/second|minute|hour|day", "" or "off" for none), counted in Redis and
# not applied while Redis is down (core/throttle.py).
# Requests per device, over its token, on every device endpoint.
DEVICE_RATE_LIMIT = os.environ.get("DEVICE_RATE_LIMIT", "300/minute")
# Device API requests without a valid token, per client address (token probing).
DEVICE_AUTH_FAILURE_LIMIT = os.environ.get("DEVICE_AUTH_FAILURE_LIMIT", "600/minute")
# Enrolments refused for a wrong provisioning key, per client address.
ENROLL_FAILURE_LIMIT = os.environ.get("ENROLL_FAILURE_LIMIT", "20/hour")
# Enrolments per provisioning key: what a leaked key can enrol before it is revoked.
ENROLL_KEY_RATE_LIMIT = os.environ.get("ENROLL_KEY_RATE_LIMIT", "500/hour")
# Failed logins per client address across all usernames (password spraying).
LOGIN_CLIENT_FAILURE_LIMIT = os.environ.get("LOGIN_CLIENT_FAILURE_LIMIT", "50/hour")
# Login lockout (django-axes) per username and client address, on the portal and the
# admin: after LOGIN_FAILURE_LIMIT failures that pair waits LOGIN_LOCKOUT_MINUTES.
AXES_FAILURE_LIMIT = int(os.environ.get("LOGIN_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = timedelta(minutes=float(os.environ.get("LOGIN_LOCKOUT_MINUTES", "15")))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_CLIENT_IP_CALLABLE = "core.client_ip.client_ip"
AXES_LOCKOUT_CALLABLE = "core.throttle_login.lockout_response"
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False  # no banner on every process start (and every management command)
# --- end of throttling ------------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Web users sign in with a session; the portal is their home page.
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "portal:devices"
LOGOUT_REDIRECT_URL = "login"

# HAProxy's stats pages, read by the central admin's cluster page (haproxy-stats): every
# balancer's (HAPROXY_STATS_ADDRESSES, comma-separated host:port, one section each), or
# when that is empty the one HAPROXY_STATS_ADDRESS (a single balancer, the local cluster).
# Each balancer shares the login below.
_stats_user, _stats_password = local_cluster.haproxy_stats_login()
HAPROXY_STATS_ADDRESS = os.environ.get(
    "HAPROXY_STATS_ADDRESS", f"{local_cluster.HOST}:{local_cluster.STATS_PORT}"
)
HAPROXY_STATS_ADDRESSES = env_list("HAPROXY_STATS_ADDRESSES", "")
HAPROXY_STATS_USER = os.environ.get("HAPROXY_STATS_USER", _stats_user)
HAPROXY_STATS_PASSWORD = os.environ.get("HAPROXY_STATS_PASSWORD", _stats_password)

# --- TLS at the load balancer (docs/security.md) ---------------------------------------
# A deployed site is HTTPS only: HAProxy terminates TLS, redirects plain HTTP and tells
# Django how the client connected in X-Forwarded-Proto (after dropping any value the
# client sent). DJANGO_BEHIND_TLS_PROXY=1, set by ansible/roles/fleet_code, turns this
# on; the local loopback cluster leaves it off and stays plain HTTP.
BEHIND_TLS_PROXY = env_bool("DJANGO_BEHIND_TLS_PROXY", False)
if BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    # Operators and deploy scripts probe the nodes themselves, over plain HTTP (HAProxy's
    # own check, /livez, is answered by uWSGI and never reaches Django).
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_HSTS_SECONDS", str(365 * 24 * 3600)))
    # Both bind every subdomain of the site's names to HTTPS; turn them off when a
    # parent domain still serves plain HTTP (`check --deploy` then says so).
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
# --- end of TLS at the load balancer -----------------------------------------------------

STATIC_URL = "static/"
STATIC_ROOT = local_cluster.VAR_DIR / "static"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # Lines pass through core.log_redaction: no token, key, cookie or password is written.
    "formatters": {
        "plain": {
            "()": "core.log_redaction.RedactingFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
        }
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}
