import json

from django.core.management.base import BaseCommand
from django.db.models import Count

from core.models import Placement, Shard
from core.pooler import PoolFigures
from routers.aliases import DIRECTORY_ALIAS
from routers.registry import refresh_registry
from shards.stats import all_shard_stats, describe_replication, pool_stats, replication_stats

COLUMNS = (
    "alias", "state", "weight", "devices", "readings", "staged", "size", "latency", "pool",
    "replication", "where",
)  # fmt: skip


def _size(num_bytes: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if num_bytes < 1024:
            return f"{num_bytes:.0f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.1f} TB"


def _pool(stats: dict) -> str:
    """What the pooler in front of a database says, in a few words."""
    if stats.get("pool_error"):
        return "pooler did not say"
    pool = stats.get("pool")
    if pool is None:
        return "direct"
    return PoolFigures(**pool).summary()


class Command(BaseCommand):
    help = (
        "Show every registered shard: state, weight, devices placed on it (from the"
        " directory), readings and staged uploads (from the shard, queried in parallel),"
        " size on disk, round-trip latency, and the pool PgBouncer keeps for it (clients,"
        " waiting clients, server connections of the cap), the primary each is served by and"
        " its standbys (state, synchronous or not, lag), and the same for the directory. A"
        " shard that cannot be reached is shown as DOWN with the reason; the command exits"
        " 1 if any is down."
    )

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="Machine-readable output.")

    def handle(self, *args, **options):
        refresh_registry(force=True)
        shards = list(Shard.objects.all())
        placed = dict(Placement.objects.values_list("shard_id").annotate(n=Count("pk")).order_by())
        live = [s.alias for s in shards if s.state != Shard.State.RETIRED]
        stats = all_shard_stats(live)
        report = []
        for shard in shards:
            entry = {
                "alias": shard.alias,
                "number": shard.number,
                "state": shard.state,
                "weight": shard.weight,
                "where": f"{shard.host}:{shard.port}/{shard.db_name}",
                "devices": placed.get(shard.alias, 0),
                "reachable": None,
            }
            result = stats.get(shard.alias)
            if isinstance(result, BaseException):
                entry.update(reachable=False, error=str(result).strip())
            elif result is not None:
                entry.update(reachable=True, **result)
            report.append(entry)
        down = [e for e in report if e["reachable"] is False]
        directory = {**pool_stats(DIRECTORY_ALIAS), **replication_stats(DIRECTORY_ALIAS)}
        if options["json"]:
            self.stdout.write(json.dumps({"shards": report, "directory": directory}, indent=2))
        else:
            self._print_table(report)
            self.stdout.write(f"directory pool: {_pool(directory)}")
            self.stdout.write(f"directory replication: {describe_replication(directory)}")
        if down:
            raise SystemExit(1)

    def _print_table(self, report):
        rows = [COLUMNS]
        for e in report:
            if e["reachable"]:
                cells = (str(e["readings"]), str(e["uploads_staged"]), _size(e["size_bytes"]))
                latency = f"{e['latency_ms']:.1f} ms"
            elif e["reachable"] is False:
                cells, latency = ("-", "-", "-"), "DOWN"
            else:
                cells, latency = ("-", "-", "-"), "-"
            head = (e["alias"], e["state"], str(e["weight"]), str(e["devices"]))
            pool = _pool(e) if e["reachable"] else "-"
            replication = describe_replication(e) if e["reachable"] else "-"
            rows.append((*head, *cells, latency, pool, replication, e["where"]))
        widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
        for row in rows:
            self.stdout.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        for e in report:
            if e["reachable"] is False:
                self.stdout.write(self.style.ERROR(f"{e['alias']} is down: {e['error']}"))
