"""A database on several hosts (its replicas, each with a pooler): libpq tries them in turn.

The Ansible deployment names every replica of the directory in DIRECTORY_DATABASE_URL
(`postgres://USER:PASSWORD@/fleet_directory?host=IP1,IP2&port=6432&connect_timeout=3`)
and registers each shard with `add_shard --host IP1,IP2`. No database is needed here:
what is checked is what Django hands to psycopg2, and that libpq takes it as a list.
"""

from types import SimpleNamespace

import dj_database_url
import psycopg2
import pytest
from django.db import connections
from django.db.backends.postgresql.base import DatabaseWrapper

from routers.aliases import DIRECTORY_ALIAS
from routers.registry import connection_settings_for

URL = "postgres://fleet:pw@/fleet_directory?host=10.0.0.11,10.0.0.12&port=6432&connect_timeout=3"


def params_of(config: dict) -> dict:
    """psycopg2's keywords for a connection with these settings (nothing is connected)."""
    wrapper = DatabaseWrapper({**config, "TIME_ZONE": None, "AUTOCOMMIT": True}, alias="probe")
    params = wrapper.get_connection_params()
    params.pop("cursor_factory", None)
    return params


def test_the_directory_url_names_every_replica():
    config = dj_database_url.parse(URL)
    assert params_of(config) == {
        "dbname": "fleet_directory",
        "user": "fleet",
        "password": "pw",
        "host": "10.0.0.11,10.0.0.12",
        "port": 6432,
        "connect_timeout": 3,
        "client_encoding": "UTF8",
    }


@pytest.fixture
def directory_of_two_replicas():
    """The directory's settings as the Ansible deployment's URL makes them."""
    saved = connections.settings[DIRECTORY_ALIAS]
    connections.settings[DIRECTORY_ALIAS] = {**saved, **dj_database_url.parse(URL)}
    try:
        yield
    finally:
        connections.settings[DIRECTORY_ALIAS] = saved


def test_a_shard_on_two_replicas_gets_its_own_hosts_and_the_directorys_timeout(
    directory_of_two_replicas,
):
    shard = SimpleNamespace(
        host="10.0.0.13,10.0.0.14", port=6432, db_name="fleet_shard_1",
        db_user="", db_password="", options={},
    )  # fmt: skip
    params = params_of(connection_settings_for(shard))
    assert params["host"] == "10.0.0.13,10.0.0.14"
    assert params["port"] == "6432"
    assert params["dbname"] == "fleet_shard_1"
    # Inherited: how long to wait for one replica before the next. (The directory's own
    # host and port, also in its OPTIONS, give way to the shard's HOST and PORT.)
    assert params["connect_timeout"] == 3


def test_libpq_tries_each_host_in_turn():
    """What psycopg2 is given is a libpq host list: a host that refuses is passed over."""
    shard = SimpleNamespace(
        host="127.0.0.2,127.0.0.3", port=9, db_name="nothing", db_user="u", db_password="p",
        options={"connect_timeout": 2},
    )  # fmt: skip
    params = params_of(connection_settings_for(shard))
    with pytest.raises(psycopg2.OperationalError) as failed:
        psycopg2.connect(**params)
    message = str(failed.value)
    assert message.index('"127.0.0.2"') < message.index('"127.0.0.3"'), message
