from django.core.management.base import BaseCommand, CommandError

from shards.registration import ShardLocation, ShardRegistrationError, register_shard


class Command(BaseCommand):
    help = (
        "Register a shard database in the directory's shard registry. The database must"
        " exist; this connects to it, runs every shard migration on it, stamps it with its"
        " shard number and lists it as active. Running app processes pick it up within"
        " seconds. Re-running with the same alias updates its location or weight."
        " Example: manage.py register_shard shard_3 --host 10.0.0.7 --port 5432"
        " --db-name fleet_shard_3"
    )

    def add_arguments(self, parser):
        parser.add_argument("alias", help="Connection alias, e.g. shard_3 (never reused).")
        parser.add_argument("--host", required=True, help="PostgreSQL host.")
        parser.add_argument("--port", type=int, default=5432, help="PostgreSQL port.")
        parser.add_argument("--db-name", required=True, help="Database name on that server.")
        parser.add_argument("--user", default="", help="Default: SHARD_DEFAULT_USER.")
        parser.add_argument("--password", default="", help="Default: SHARD_DEFAULT_PASSWORD.")
        parser.add_argument(
            "--weight",
            type=int,
            default=None,
            help="Relative capacity for placing new devices (default 100 for a new shard).",
        )
        parser.add_argument(
            "--no-migrate", action="store_true", help="Skip migrations (they must be applied)."
        )

    def handle(self, *args, **options):
        location = ShardLocation(
            host=options["host"],
            port=options["port"],
            db_name=options["db_name"],
            user=options["user"],
            password=options["password"],
        )
        if options["weight"] is not None and options["weight"] < 0:
            raise CommandError("--weight must be zero or more")
        try:
            shard = register_shard(
                options["alias"],
                location,
                weight=options["weight"],
                migrate=not options["no_migrate"],
            )
        except ShardRegistrationError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"registered {shard.alias} (number {shard.number}, {shard.state}, weight"
            f" {shard.weight}) at {shard.host}:{shard.port}/{shard.db_name}"
        )
