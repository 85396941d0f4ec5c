"""System checks on settings that must agree with each other."""

from core.checks import move_grace_outlives_placement_cache


def test_cleanup_grace_must_outlive_the_placement_cache(settings):
    settings.PLACEMENT_LOCAL_TTL = 30
    settings.MOVE_CLEANUP_GRACE_SECONDS = 120
    assert move_grace_outlives_placement_cache() == []

    settings.MOVE_CLEANUP_GRACE_SECONDS = 30
    (error,) = move_grace_outlives_placement_cache()
    assert error.id == "core.E001"
    assert "PLACEMENT_LOCAL_TTL" in error.msg
