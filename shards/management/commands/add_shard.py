import argparse
import json
from typing import Any

from django.conf import settings
from django.core.management.base import (
    BaseCommand,
    CommandError,
    CommandParser,
    DjangoHelpFormatter,
)
from django.db import DatabaseError

from shards.registration import (
    ShardLocation,
    ShardRegistrationError,
    check_registration,
    create_shard_database,
    register_shard,
)
from shards.stats import describe_replication, replication_stats

EXAMPLES = """\
examples:
  # a new, empty database on an existing server: create it, migrate it, list it
  manage.py add_shard shard_3 --host 10.0.0.7 --port 5432 --db-name fleet_shard_3 --create-db

  # the same shard again, now taking twice the share of new devices
  manage.py add_shard shard_3 --host 10.0.0.7 --port 5432 --db-name fleet_shard_3 --weight 200

  # its own login, stored in the registry; one JSON object for scripts
  manage.py add_shard shard_4 --host db4.internal --db-name fleet_shard_4 \\
      --user fleet_shard --password '...' --json

then: manage.py cluster_status   (the new shard is listed as active)
"""


class HelpFormatter(DjangoHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the paragraphs and the examples' line breaks in --help."""


class Command(BaseCommand):
    help = """\
Add a shard database to the cluster, or update one: with --create-db create the
database if the server does not have it yet, then run every shard migration on it,
stamp it with its shard number (a new shard gets the next number; numbers and
aliases are never reused) and list it in the directory's shard registry as active
with its weight. The registry row is written last, so nothing routes to a
half-made shard.

Running app nodes and Celery workers pick the shard up by themselves, without a
restart: each process re-reads the registry when its copy is older than
SHARD_REGISTRY_TTL seconds (default 5). New devices then go to the active shard
with the fewest devices per unit of weight.

Re-running it with the same alias is safe: it updates the shard's location (host,
port, database, login) or --weight, applies missing migrations and keeps the
number. Only point a shard at a new location that holds its data (a restored
copy, say); moving devices is not this command's job.

Without --user/--password every process uses SHARD_DEFAULT_USER and
SHARD_DEFAULT_PASSWORD (by default the directory's login); with --create-db that
login must be allowed to create databases."""

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("epilog", EXAMPLES)
        return super().create_parser(prog_name, subcommand, **kwargs)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "alias",
            help="Connection alias: lower-case letters, digits and _, e.g. shard_3.",
        )
        parser.add_argument("--host", required=True, help="PostgreSQL host of the shard.")
        parser.add_argument("--port", type=int, default=5432, help="Its port (default 5432).")
        parser.add_argument("--db-name", required=True, help="The shard's database on that server.")
        parser.add_argument("--user", default="", help="Login (default: SHARD_DEFAULT_USER).")
        parser.add_argument(
            "--password", default="", help="Password (default: SHARD_DEFAULT_PASSWORD)."
        )
        parser.add_argument(
            "--weight",
            type=int,
            default=None,
            help="Relative capacity for placing new devices: twice the weight takes twice"
            " the devices (default 100 for a new shard; unchanged when re-running).",
        )
        parser.add_argument(
            "--create-db",
            action="store_true",
            help="Create the database first if it does not exist (an existing one is fine).",
        )
        parser.add_argument(
            "--no-migrate",
            action="store_true",
            help="Skip the migrations (only when they are known to be applied).",
        )
        parser.add_argument(
            "--json",
            action="store_true",
            help="Print one JSON object (alias, number, state, weight, host, port, db_name,"
            " created_database) and nothing else.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        alias = options["alias"]
        weight = options["weight"]
        quiet = options["json"]
        if weight is not None and weight < 0:
            raise CommandError("--weight must be zero or more")
        location = ShardLocation(
            host=options["host"],
            port=options["port"],
            db_name=options["db_name"],
            user=options["user"],
            password=options["password"],
        )
        where = f"{location.host}:{location.port}"

        def show(message: str) -> None:
            if not quiet:
                self.stdout.write(message)
                self.stdout.flush()

        doing = "checking the registry"
        try:
            # Refuse a bad or retired alias before creating anything.
            check_registration(alias, location, weight=weight)
            created = False
            if options["create_db"]:
                doing = f"creating database {location.db_name} on {where}"
                show(f"{doing} ...")
                created = create_shard_database(location)
                show(f"database {location.db_name} {'created' if created else 'already exists'}")

            def step(message: str) -> None:
                nonlocal doing
                doing = message
                show(f"{message} ...")

            shard = register_shard(
                alias,
                location,
                weight=weight,
                migrate=not options["no_migrate"],
                on_step=step,
            )
        except ShardRegistrationError as exc:
            raise CommandError(str(exc)) from exc
        except DatabaseError as exc:
            raise CommandError(f"failed while {doing}: {exc}".strip()) from exc

        replication = replication_stats(shard.alias)
        if quiet:
            result = {
                "alias": shard.alias,
                "number": shard.number,
                "state": str(shard.state),
                "weight": shard.weight,
                "host": shard.host,
                "port": int(shard.port),
                "db_name": shard.db_name,
                "created_database": created,
                **replication,
            }
            self.stdout.write(json.dumps(result))
            return
        self.stdout.write(
            f"registered {shard.alias} (number {shard.number}, {shard.state}, weight"
            f" {shard.weight}) at {shard.host}:{shard.port}/{shard.db_name}; running processes"
            f" use it within {settings.SHARD_REGISTRY_TTL:g}s"
        )
        self.stdout.write(f"replication: {describe_replication(replication)}")
