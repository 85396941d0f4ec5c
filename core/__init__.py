"""The Django project and the directory. Loads the Celery app so tasks bind to it."""

from core.celery import app as celery_app

__all__ = ["celery_app"]
