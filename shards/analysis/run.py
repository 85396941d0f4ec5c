"""One analysis run of one shard: rollups, anomaly rules, offline, expiry, retention.

A run holds an advisory lock on the shard's own database (shards.advisory), so two runs
of one shard never overlap (the second skips; beat queues another soon). Each
step works in short transactions of its own and takes the fences of the devices
it touches through lock_owned_devices, so a device a move holds is skipped and
done by a later run on whichever shard owns it then: its pending rollups and
last-seen time travel with it. A step that fails is logged and does not stop
the others; within the rollups and the rules, a device that fails is logged and
reported and does not stop the other devices.
"""

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from shards.advisory import holding
from shards.analysis.buckets import MinuteBucket
from shards.analysis.expiry import expire_commands
from shards.analysis.offline import detect_offline
from shards.analysis.retention import delete_imported_uploads, delete_old_readings
from shards.analysis.rollups import RollupResult, roll_up_shard
from shards.analysis.rules import evaluate_rules

logger = logging.getLogger(__name__)

# The lock (namespace, 0) on the shard: apart from the move (7401) and
# rebalance (7402) namespaces, which live on the directory.
ANALYSIS_LOCK_NAMESPACE = 7411


@contextmanager
def shard_run_lock(alias: str) -> Iterator[bool]:
    """Hold the shard's analysis lock for the block; yields False if another run has it."""
    with holding(alias, ANALYSIS_LOCK_NAMESPACE, 0, holder=f"fleet-analysis {alias}") as held:
        yield held


def analyse_shard(alias: str) -> dict[str, Any]:
    """Run every analysis step on one shard; returns (and logs) what each step did."""
    started = time.monotonic()
    summary: dict[str, Any] = {"shard": alias}
    with shard_run_lock(alias) as acquired:
        if not acquired:
            summary["skipped"] = "another analysis run holds this shard"
            logger.info("analysis of %s skipped: another run holds it", alias)
            return summary
        errors: dict[str, str] = {}

        def step(name: str, work: Callable[[], Any]) -> Any:
            try:
                return work()
            except Exception as exc:  # one broken step must not stop the others
                logger.exception("analysis of %s: step %s failed", alias, name)
                errors[name] = f"{type(exc).__name__}: {exc}"
                return None

        rollups: RollupResult | None = step("rollups", lambda: roll_up_shard(alias))
        changed: list[MinuteBucket] = rollups.changed if rollups else []
        summary["rollups"] = rollups.as_dict() if rollups else None
        if rollups and rollups.devices_failed:
            errors["rollups"] = "; ".join(
                f"device {device_id}: {reason} (its marks are kept for the next run)"
                for device_id, reason in sorted(rollups.devices_failed.items())
            )
        summary["rules"] = rules = step("rules", lambda: evaluate_rules(alias, changed))
        if rules and rules["devices_failed"]:
            errors["rules"] = f"{rules['devices_failed']} device(s) failed; the log says why"
        summary["offline"] = step("offline", lambda: detect_offline(alias))
        summary["expiry"] = {"expired": step("expiry", lambda: expire_commands(alias))}
        summary["retention"] = {
            "readings": step("retention_readings", lambda: delete_old_readings(alias)),
            "uploads": step("retention_uploads", lambda: delete_imported_uploads(alias)),
        }
        if errors:
            summary["errors"] = errors
    summary["seconds"] = round(time.monotonic() - started, 3)
    logger.info("analysis of %s: %s", alias, summary)
    return summary
