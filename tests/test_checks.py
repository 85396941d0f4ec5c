"""System checks on settings that must agree with each other."""

from core.checks import credential_changes_bite_quickly


def test_credentials_may_be_cached_locally_two_seconds_at_most(settings):
    settings.CREDENTIAL_LOCAL_TTL = 1
    assert credential_changes_bite_quickly() == []
    settings.CREDENTIAL_LOCAL_TTL = 10
    (error,) = credential_changes_bite_quickly()
    assert error.id == "core.E002" and "CREDENTIAL_LOCAL_TTL" in error.msg
