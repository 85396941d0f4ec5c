"""The Celery app: imports uploads and runs periodic work on every shard."""

import os

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger

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
