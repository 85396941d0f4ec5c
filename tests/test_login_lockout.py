"""Login lockouts on the portal and the admin (django-axes), per username and client address.

Wrong passwords lock the (username, address) pair out, even for the right
password; the same user elsewhere and other users at that address are not
locked out; behind HAProxy the address is the forwarded one, and a direct
client cannot dodge the lockout by writing X-Forwarded-For itself.
"""

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.core.management import call_command
from django.test import Client

from core.models import User

PORTAL = "/accounts/login/"
ADMIN = "/admin/login/"
ATTACKER = "203.0.113.5"
ELSEWHERE = "198.51.100.20"
LIMIT = 3
COOL_OFF = timedelta(minutes=7)


@pytest.fixture
def people(shards, settings) -> dict[str, User]:
    """Three users; lockouts after LIMIT failures for COOL_OFF (not the defaults)."""
    settings.AXES_FAILURE_LIMIT = LIMIT
    settings.AXES_COOLOFF_TIME = COOL_OFF
    return {
        "alice": User.objects.create_user("alice", password="right-horse-battery"),
        "bob": User.objects.create_user("bob", password="bob-s-own-staple"),
        "root": User.objects.create_user("root", password="root-pw-correct", is_staff=True),
    }


def attempt(path: str, username: str, password: str, address: str = ATTACKER, **meta):
    client = Client(REMOTE_ADDR=address, **meta)
    answer = client.post(path, {"username": username, "password": password})
    return answer, "_auth_user_id" in client.session


def fail(path: str, username: str, times: int, address: str = ATTACKER, **meta) -> None:
    for _ in range(times):
        answer, signed_in = attempt(path, username, "wrong-guess", address, **meta)
        assert not signed_in and answer.status_code in (200, 429)


@pytest.mark.parametrize(
    ("path", "username", "password"),
    [(PORTAL, "alice", "right-horse-battery"), (ADMIN, "root", "root-pw-correct")],
)
def test_wrong_passwords_lock_the_pair_out_even_for_the_right_password(
    people, path, username, password
):
    fail(path, username, LIMIT)
    answer, signed_in = attempt(path, username, password)
    assert not signed_in
    assert answer.status_code == 429
    assert int(answer["Retry-After"]) == COOL_OFF.total_seconds()
    assert b"Too many failed logins" in answer.content


def test_a_lockout_does_not_reach_the_user_elsewhere_nor_others_at_that_address(people):
    fail(PORTAL, "alice", LIMIT + 3)
    answer, signed_in = attempt(PORTAL, "alice", "right-horse-battery", address=ELSEWHERE)
    assert signed_in and answer.status_code == 302
    answer, signed_in = attempt(PORTAL, "bob", "bob-s-own-staple")
    assert signed_in and answer.status_code == 302


def test_failures_below_the_limit_are_forgotten_after_a_good_login(people):
    for _ in range(3):
        fail(PORTAL, "alice", LIMIT - 1)
        answer, signed_in = attempt(PORTAL, "alice", "right-horse-battery")
        assert signed_in, answer.status_code


def test_behind_haproxy_the_forwarded_address_is_locked_out(people):
    via_proxy = {"HTTP_X_FORWARDED_FOR": ATTACKER}
    fail(PORTAL, "alice", LIMIT, address="127.0.0.1", **via_proxy)
    answer, signed_in = attempt(
        PORTAL, "alice", "right-horse-battery", address="127.0.0.1", **via_proxy
    )
    assert not signed_in and answer.status_code == 429
    # Another client through the same proxy is another address.
    answer, signed_in = attempt(
        PORTAL,
        "alice",
        "right-horse-battery",
        address="127.0.0.1",
        HTTP_X_FORWARDED_FOR=f"{ATTACKER}, {ELSEWHERE}",
    )
    assert signed_in and answer.status_code == 302


def test_a_direct_client_cannot_dodge_the_lockout_with_x_forwarded_for(people):
    for n in range(LIMIT):
        fail(PORTAL, "alice", 1, HTTP_X_FORWARDED_FOR=f"10.9.8.{n}")
    answer, signed_in = attempt(
        PORTAL, "alice", "right-horse-battery", HTTP_X_FORWARDED_FOR="10.9.8.200"
    )
    assert not signed_in and answer.status_code == 429


def test_a_client_trying_many_usernames_is_throttled_alone(people, settings):
    settings.LOGIN_CLIENT_FAILURE_LIMIT = "4/hour"
    for name in ("carol", "dave", "erin", "frank"):
        fail(PORTAL, name, 1)
    answer, signed_in = attempt(PORTAL, "bob", "bob-s-own-staple")
    assert not signed_in and answer.status_code == 429
    assert 0 < int(answer["Retry-After"]) <= 3600
    answer, signed_in = attempt(ADMIN, "root", "root-pw-correct")
    assert not signed_in and answer.status_code == 429
    answer, signed_in = attempt(PORTAL, "bob", "bob-s-own-staple", address=ELSEWHERE)
    assert signed_in and answer.status_code == 302


@pytest.mark.parametrize("how", ["admin page", "command"])
def test_admins_see_a_lockout_and_clear_it(people, how):
    fail(PORTAL, "alice", LIMIT)
    admin = Client()
    admin.force_login(User.objects.create_superuser("boss", password="boss-pw-1"))
    listing = admin.get("/admin/axes/accessattempt/")
    assert listing.status_code == 200
    assert b"alice" in listing.content and ATTACKER.encode() in listing.content

    if how == "command":
        call_command("axes_reset_username", "alice")
    else:
        locked = AccessAttempt.objects.get(username="alice")
        deleted = admin.post(f"/admin/axes/accessattempt/{locked.pk}/delete/", {"post": "yes"})
        assert deleted.status_code == 302
    answer, signed_in = attempt(PORTAL, "alice", "right-horse-battery")
    assert signed_in and answer.status_code == 302
