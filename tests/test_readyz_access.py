"""/readyz names shards and latencies: only internal clients and staff may read it.

Everyone else gets a 404, as for a page that does not exist. Behind HAProxy the
client is the forwarded address, so an outside request does not pass because
HAProxy itself connects from loopback; a direct client's own X-Forwarded-For
counts for nothing.
"""

import pytest
from django.test import Client

from core.models import User

OUTSIDER = "203.0.113.5"


def readyz(address: str = "127.0.0.1", **meta):
    return Client(REMOTE_ADDR=address, **meta).get("/readyz")


def assert_hidden(answer) -> None:
    assert answer.status_code == 404
    assert b"shard_1" not in answer.content and b"latency" not in answer.content


def test_an_outside_client_gets_404(shards):
    assert_hidden(readyz(OUTSIDER))


def test_an_outside_client_through_haproxy_gets_404(shards):
    assert_hidden(readyz("127.0.0.1", HTTP_X_FORWARDED_FOR=OUTSIDER))


def test_a_direct_client_cannot_pose_as_loopback(shards):
    assert_hidden(readyz(OUTSIDER, HTTP_X_FORWARDED_FOR="127.0.0.1"))


def test_loopback_is_allowed_by_default(shards):
    answer = readyz("127.0.0.1")
    assert answer.status_code == 200 and set(answer.json()["shards"]) == set(shards)


def test_configured_internal_networks_are_allowed_through_haproxy(shards, settings):
    settings.READYZ_ALLOWED_NETWORKS = ["10.0.0.0/8"]
    assert readyz("127.0.0.1", HTTP_X_FORWARDED_FOR="10.20.30.40").status_code == 200
    assert_hidden(readyz("127.0.0.1", HTTP_X_FORWARDED_FOR=OUTSIDER))


@pytest.mark.parametrize(("is_staff", "status"), [(True, 200), (False, 404)])
def test_staff_may_read_it_from_anywhere_other_users_may_not(shards, is_staff, status):
    client = Client(REMOTE_ADDR=OUTSIDER)
    client.force_login(User.objects.create_user("someone", is_staff=is_staff))
    assert client.get("/readyz").status_code == status
