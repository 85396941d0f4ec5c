import json

from django.core.management.base import BaseCommand, CommandError

from routers.registry import refresh_registry, serving_shards
from shards.analysis.run import analyse_shard


class Command(BaseCommand):
    help = (
        "Run the analysis of one shard, or of every active and draining shard, now and"
        " in this process: rollups, threshold and z-score alerts, offline alerts, command"
        " expiry and retention, as the Celery beat task does every ANALYSIS_INTERVAL_SECONDS."
        " A shard another run is analysing is skipped. Prints what each step did;"
        " exits 1 if a step failed on any shard."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--shard",
            action="append",
            metavar="ALIAS",
            help="Analyse only this shard (repeat for several). Default: every serving shard.",
        )
        parser.add_argument("--json", action="store_true", help="One JSON object on stdout.")

    def handle(self, *args, **options):
        refresh_registry(force=True)
        serving = serving_shards()
        aliases = options["shard"] or serving
        unknown = sorted(set(aliases) - set(serving))
        if unknown:
            raise CommandError(
                f"not a serving shard: {', '.join(unknown)} (serving: {', '.join(serving)})"
            )
        summaries = [analyse_shard(alias) for alias in aliases]
        if options["json"]:
            self.stdout.write(json.dumps({"shards": summaries}, indent=2, default=str))
        else:
            for summary in summaries:
                self.stdout.write(self._line(summary))
        if any("errors" in summary for summary in summaries):
            raise CommandError("analysis failed on some step; see the errors above")

    @staticmethod
    def _line(summary: dict) -> str:
        alias = summary["shard"]
        if "skipped" in summary:
            return f"{alias}: skipped ({summary['skipped']})"
        parts = [
            f"{step} {summary[step]}"
            for step in ("rollups", "rules", "offline", "expiry", "retention")
        ]
        errors = summary.get("errors")
        tail = f"; ERRORS {errors}" if errors else ""
        return f"{alias} ({summary['seconds']}s): " + "; ".join(parts) + tail
