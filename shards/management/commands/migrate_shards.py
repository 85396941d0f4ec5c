from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from core.models import Shard
from routers.registry import refresh_registry, serving_shards
from shards.registration import stamp_identity


class Command(BaseCommand):
    help = (
        "Apply the shard migrations to every registered shard (active and draining), one"
        " after the other, and check each carries its shard number. Run it after deploying"
        " code with new shard migrations; `manage.py migrate` covers the directory only."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--shard", action="append", dest="shards", help="Only this alias (repeatable)."
        )
        parser.add_argument("--plan", action="store_true", help="Show what would be applied.")

    def handle(self, *args, **options):
        refresh_registry(force=True)
        known = serving_shards()
        targets = options["shards"] or known
        unknown = sorted(set(targets) - set(known))
        if unknown:
            raise CommandError(f"not registered (or retired): {', '.join(unknown)}")
        if not targets:
            self.stdout.write("no shards registered; add one with manage.py add_shard")
            return
        numbers = dict(Shard.objects.filter(alias__in=targets).values_list("alias", "number"))
        for alias in targets:
            self.stdout.write(self.style.MIGRATE_HEADING(f"{alias}:"))
            call_command(
                "migrate",
                database=alias,
                interactive=False,
                plan=options["plan"],
                verbosity=options["verbosity"],
                stdout=self.stdout,
            )
            if not options["plan"]:
                stamp_identity(alias, numbers[alias])
        self.stdout.write(self.style.SUCCESS(f"migrated {len(targets)} shard(s)"))
