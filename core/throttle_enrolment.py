"""Enrolment throttles: wrong provisioning keys per client, enrolments per key.

A client that sent ENROLL_FAILURE_LIMIT wrong keys is refused (429) until its
window slides on, whatever key it sends next, so keys cannot be probed; other
clients enrol as before. A valid key enrols at most ENROLL_KEY_RATE_LIMIT
devices, which bounds what a leaked key can do before an admin revokes it.
"""

from django.conf import settings

from core.throttle import Throttled, hit, used_up


def refuse_probing_client(client: str) -> None:
    """Throttled if `client` has used up its wrong-key attempts."""
    wait = used_up(settings.ENROLL_FAILURE_LIMIT, "enrol-failures", client)
    if wait is not None:
        raise Throttled(
            f"too many enrolments with a wrong provisioning key from this address;"
            f" retry in {wait} s",
            wait,
        )


def count_wrong_key(client: str) -> None:
    hit(settings.ENROLL_FAILURE_LIMIT, "enrol-failures", client)


def count_enrolment(key_digest: str) -> None:
    """Count an enrolment with a valid key (by its digest); Throttled past the key's rate."""
    wait = hit(settings.ENROLL_KEY_RATE_LIMIT, "enrol-key", key_digest)
    if wait is not None:
        raise Throttled(
            f"this provisioning key enrolled too many devices recently"
            f" (limit {settings.ENROLL_KEY_RATE_LIMIT}); retry in {wait} s",
            wait,
        )
