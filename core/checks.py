"""System checks for settings whose values depend on each other."""

from django.conf import settings
from django.core.checks import Error, register


@register()
def move_grace_outlives_placement_cache(app_configs=None, **kwargs) -> list[Error]:
    """Old rows must outlive every cached placement, or a stale reader finds nothing."""
    grace = settings.MOVE_CLEANUP_GRACE_SECONDS
    cache = settings.PLACEMENT_LOCAL_TTL
    if grace > cache:
        return []
    return [
        Error(
            f"MOVE_CLEANUP_GRACE_SECONDS ({grace:g}) must be longer than PLACEMENT_LOCAL_TTL"
            f" ({cache:g}): a process with a cached placement could read a moved device's"
            " old shard after its rows were removed.",
            id="core.E001",
        )
    ]
