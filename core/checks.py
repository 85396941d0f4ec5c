"""System checks for settings whose values depend on each other."""

from django.conf import settings
from django.core.checks import Error, register

# Revoking, deactivating or deleting a device must bite on every node within this long.
CREDENTIAL_CHANGE_BITES_WITHIN = 2.0


@register()
def credential_changes_bite_quickly(app_configs=None, **kwargs) -> list[Error]:
    """Other nodes keep a credential in their process no longer than CREDENTIAL_LOCAL_TTL."""
    ttl = settings.CREDENTIAL_LOCAL_TTL
    if 0 <= ttl <= CREDENTIAL_CHANGE_BITES_WITHIN:
        return []
    return [
        Error(
            f"CREDENTIAL_LOCAL_TTL ({ttl:g}) must lie between 0 and"
            f" {CREDENTIAL_CHANGE_BITES_WITHIN:g} seconds: a revoked token or a deactivated"
            " device would keep working that long on other nodes.",
            id="core.E002",
        )
    ]
