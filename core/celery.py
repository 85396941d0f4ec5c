"""The Celery app: imports uploads and runs periodic work on every shard."""

import os

from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    task_postrun,
    task_prerun,
)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")

app = Celery("fleet")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@after_setup_logger.connect
@after_setup_task_logger.connect
def redact_worker_logs(logger, **kwargs) -> None:
    """Workers and beat log through Celery's own handlers: give them the redaction too."""
    from core.log_redaction import redact_handlers

    redact_handlers(logger)


@task_prerun.connect
@task_postrun.connect
def close_old_connections(**kwargs) -> None:
    """Around every task, as around every request: a connection that broke or passed
    CONN_MAX_AGE is closed, a healthy one kept (opening one cost more than an import)."""
    from django.db import close_old_connections as close_if_unusable_or_obsolete

    close_if_unusable_or_obsolete()
