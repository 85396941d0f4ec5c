import json
import time
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.utils import timezone

from core.models import Rebalance, Shard
from shards.rebalance.cli import (
    OpsCommand,
    add_cost_argument,
    add_run_arguments,
    command_errors,
    run_options_given,
)
from shards.rebalance.costs import gather_fleet
from shards.rebalance.drain import (
    RetireStatus,
    drain_kind,
    get_shard,
    mark_draining,
    pinned_on,
    try_retire,
)
from shards.rebalance.drain_run import move_devices_off
from shards.rebalance.locks import exclusive_runner
from shards.rebalance.planner import Plan, plan_drain
from shards.rebalance.progress import MovesProgress
from shards.rebalance.report import counts, plan_lines, run_lines, run_summary
from shards.rebalance.runner import (
    RebalanceError,
    check_kind,
    refuse_interrupted,
)
from shards.tasks import drain_shard as drain_shard_task

EXAMPLES = """\
examples:
  manage.py drain_shard shard_2 --dry-run        # where its devices would go; nothing changes
  manage.py drain_shard shard_2                  # drain it; retire it if it can be already
  manage.py drain_shard shard_2 --wait           # ... and wait until it can be retired
  manage.py drain_shard shard_2                  # again later: continues, then retires
  manage.py drain_shard shard_2 --include-pinned # pinned devices move too (and stay pinned)
  manage.py drain_shard shard_2 --parallel 4 --max-per-source 4   # its devices go 4 at once
  manage.py drain_shard shard_2 --background     # on a Celery worker; `rebalance --status`
"""

# A retirement that waits for cleanup looks again this long after the grace period ends.
WAIT_MARGIN_SECONDS = 1.0


class Command(OpsCommand):
    examples = EXAMPLES
    help = """\
Take a shard out of service. It is marked draining at once, so new devices no
longer go there (nor do rebalanced ones); then every device on it moves, online
to the active shard least loaded for its weight (by --cost, rows by default),
largest first, several at once and throttled as a rebalance's are (see the
options below and `rebalance --help`). The moves are recorded as a run of kind
drain:<alias>, shown by `rebalance --status`.

Pinned devices block a drain: it refuses, names them and changes nothing, unless
--include-pinned is given; then they move too and stay pinned on their new shard.

When the shard holds no device any more it is retired (never used again; its
alias and number are never reused), but only once the old rows of every device
moved off it are cleaned up: that happens when a move's grace period
(MOVE_CLEANUP_GRACE_SECONDS) has passed, and this command does it then itself.
Until then it says when to run it again; with --wait it sleeps until then.

Running it again is always safe and continues where it stopped: it finishes
interrupted move jobs, continues an interrupted drain of this shard, moves what is
still there and retires the shard when it can (`rebalance --resume` also continues
an interrupted drain, without retiring). `rebalance --stop` stops a drain once
its moves in flight have ended; the shard stays draining. The exit status is 1 if
devices are left on the shard other than by waiting for cleanup.

--background marks the shard draining and hands the rest to a Celery worker (as
the admin's drain action does); the command returns at once. The drain's run
shows in `rebalance --status` once the worker has planned it; run this command
again (without --background) later to retire the shard."""

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("alias", help="The shard to drain, e.g. shard_2.")
        add_cost_argument(parser)
        parser.add_argument(
            "--include-pinned",
            action="store_true",
            help="Move pinned devices as well; they stay pinned on their new shard.",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Print where each device would go and the loads; change nothing (the shard"
            " is not even marked draining).",
        )
        parser.add_argument(
            "--wait",
            action="store_true",
            help="Once the shard is empty, sleep until the moves' grace period has passed,"
            " clean up and retire it.",
        )
        parser.add_argument(
            "--background",
            action="store_true",
            help="Mark the shard draining and queue the drain on a Celery worker; return at once.",
        )
        parser.add_argument(
            "--json",
            action="store_true",
            help="Print only JSON on stdout: {alias, dry_run, plan, runs, retire}, or {alias,"
            " queued, message} with --background. Progress bars are off.",
        )
        add_run_arguments(parser, resumable="an interrupted drain of this shard")

    def handle(self, *args: Any, **options: Any) -> None:
        self.as_json = options["json"]
        alias = options["alias"]
        with command_errors():
            shard = get_shard(alias)
            if shard.state == Shard.State.RETIRED:
                self.finish(alias, None, [], try_retire(alias))
                return
            given = run_options_given(options)
            if options["dry_run"]:
                self.dry_run(alias, options)
                return
            check_kind(drain_kind(alias))
            self.refuse_pinned(alias, options["include_pinned"])
            if options["background"]:
                self.queue(alias, options, given)
                return
            plan, runs = self.drain(alias, options, given)
            status = try_retire(alias)
            if options["wait"]:
                status = self.wait_for_retirement(alias, status)
        self.finish(alias, plan, runs, status)

    def emit(self, payload: dict[str, Any]) -> None:
        self.stdout.write(json.dumps(payload, indent=2, default=str))

    def say(self, message: str) -> None:
        if not self.as_json:
            self.stdout.write(message)

    def make_plan(self, alias: str, options: dict[str, Any]) -> Plan:
        shards, devices = gather_fleet(options["cost"])
        return plan_drain(shards, devices, alias, include_pinned=options["include_pinned"])

    def dry_run(self, alias: str, options: dict[str, Any]) -> None:
        plan = self.make_plan(alias, options)
        if self.as_json:
            self.emit({"alias": alias, "dry_run": True, "plan": plan.as_json(), "runs": []})
            return
        self.stdout.write("\n".join(plan_lines(plan, options["cost"])))
        if plan.blocked:
            self.stdout.write(
                f"a drain would refuse: {len(plan.blocked)} pinned devices (see above);"
                " unpin them or use --include-pinned"
            )
        self.stdout.write("dry run: nothing was changed")

    def refuse_pinned(self, alias: str, include_pinned: bool, *, draining: bool = False) -> None:
        pinned = pinned_on(alias)
        if pinned and not include_pinned:
            names = ", ".join(f"{serial} ({pk})" for pk, serial in pinned)
            changed = (
                f"{alias} stays draining; run `drain_shard {alias}` again then."
                if draining
                else "Nothing was changed."
            )
            raise RebalanceError(
                f"{alias} holds {len(pinned)} pinned devices: {names}. Unpin them"
                " (`pin_device SERIAL --unpin`), move them (`move_device`), or drain with"
                f" --include-pinned (they move and stay pinned). {changed}"
            )

    def drain(
        self, alias: str, options: dict[str, Any], given: dict[str, Any]
    ) -> tuple[Plan, list[Rebalance]]:
        """Continue an interrupted drain of `alias`, then move whatever is still on it."""
        include_pinned = options["include_pinned"]
        return move_devices_off(
            alias,
            options["cost"],
            include_pinned=include_pinned,
            progress=MovesProgress(enabled=not self.as_json),
            run_step=self.run_to_end,
            say=self.say,
            on_blocked=lambda plan: self.refuse_pinned(alias, include_pinned, draining=True),
            options=given,
        )

    def queue(self, alias: str, options: dict[str, Any], given: dict[str, Any]) -> None:
        """Mark the shard draining and hand the drain to a worker, unless another run is in
        the way (the worker would only wait for it)."""
        with exclusive_runner():
            refuse_interrupted(except_kind=drain_kind(alias))
            mark_draining(alias)
        set_options = {name: value for name, value in given.items() if value is not None}
        try:
            drain_shard_task.delay(alias, options["cost"], options["include_pinned"], set_options)
        except Exception as exc:
            raise CommandError(
                f"{alias} is draining, but the drain could not be queued ({exc}); run"
                f" `drain_shard {alias}` without --background"
            ) from exc
        message = (
            f"{alias} is draining: no new devices go there. Its devices move off on a Celery"
            " worker; `rebalance --status` shows the drain once the worker has planned it,"
            f" `rebalance --stop` stops it. Run `drain_shard {alias}` again to retire it once"
            " it is empty."
        )
        if self.as_json:
            self.emit({"alias": alias, "queued": True, "message": message})
        else:
            self.stdout.write(message)

    def continue_hint(self, run: Rebalance) -> str:
        return f"Run `drain_shard {run.kind.split(':', 1)[1]}` again to continue."

    def wait_for_retirement(self, alias: str, status: RetireStatus) -> RetireStatus:
        while status.only_waiting and status.wait_until is not None:
            seconds = (status.wait_until - timezone.now()).total_seconds() + WAIT_MARGIN_SECONDS
            if not self.as_json:
                self.stderr.write(
                    f"waiting {max(seconds, 0):.0f}s for the moves' grace period, then retiring"
                )
            time.sleep(max(seconds, 0.1))
            status = try_retire(alias)
        return status

    def finish(
        self, alias: str, plan: Plan | None, runs: list[Rebalance], status: RetireStatus
    ) -> None:
        if self.as_json:
            self.emit(
                {
                    "alias": alias,
                    "dry_run": False,
                    "plan": plan.as_json() if plan else None,
                    "runs": [run_summary(run) for run in runs],
                    "retire": status.as_json(),
                }
            )
        else:
            for run in runs:
                self.stdout.write("")
                self.stdout.write("\n".join(run_lines(run)))
            self.stdout.write(status.message())
        failed = any(counts(run)["failed"] for run in runs)
        if failed or not (status.retired or status.only_waiting):
            raise SystemExit(1)
