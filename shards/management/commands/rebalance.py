import json
from typing import Any

from django.core.management.base import CommandError, CommandParser

from core.models import MoveJob, Rebalance
from shards.moves.report import job_summary
from shards.rebalance.cli import (
    OpsCommand,
    add_cost_argument,
    add_run_arguments,
    command_errors,
    run_options_given,
)
from shards.rebalance.costs import gather_fleet
from shards.rebalance.locks import exclusive_runner
from shards.rebalance.options import RunOptions
from shards.rebalance.planner import Plan, plan_rebalance
from shards.rebalance.progress import MovesProgress
from shards.rebalance.report import counts, plan_lines, run_lines, run_summary
from shards.rebalance.runner import (
    create_run,
    execute,
    finish_interrupted_moves,
    interrupted_runs,
    queued_runs,
    refuse_interrupted,
    request_stop,
    resume_run,
    start_queued,
    with_options,
)
from shards.tasks import rebalance_run

EXAMPLES = """\
examples:
  manage.py rebalance --dry-run                  # the plan by rows; nothing changes
  manage.py rebalance                            # plan and run it, with progress bars
  manage.py rebalance --cost devices --max-moves 10
  manage.py rebalance --min-improvement 0.002    # many small devices: allow smaller steps
  manage.py rebalance --parallel 4 --max-per-target 4     # after adding one shard
  manage.py rebalance --max-rows-per-second 50000 --max-import-lag 5
  manage.py rebalance --background               # queue it on a Celery worker; returns at once
  manage.py rebalance --status                   # latest runs: moves in flight, holds, phases
  manage.py rebalance --stop                     # from another terminal: no new moves
  manage.py rebalance --resume                   # after the runner was killed
  manage.py rebalance --resume --parallel 1      # ... going on one move at a time
"""


class Command(OpsCommand):
    examples = EXAMPLES
    help = """\
Spread devices over the active shards in proportion to their weights: a shard with
twice the weight should hold twice the cost, a shard of weight 0 nothing that can
move. The cost is chosen with --cost: devices, rows (the default) or bytes; each
shard is asked in parallel what each device it owns costs there.

The plan is greedy: from the shard most over its share to the one most under it,
move the device that lowers the cost sitting on the wrong shard the most, as long
as a move lowers it by at least --min-improvement of the total cost; then stop.
Each device moves at most once per run. Pinned devices (create_device --pin,
pin_device) never move; devices being moved are left alone; draining shards and
shards of weight 0 (pin_device --dedicate) keep only their pinned devices.

A run is recorded and makes its moves, each an online move as with move_device:
the device keeps reporting, writers wait only for the short fenced window. Up to
--parallel moves run at once (never two of one device, at most --max-per-source
out of and --max-per-target into any one shard). A throttle paces them to
--max-rows-per-second and starts no move from or to a shard whose import lag is
over --max-import-lag (moves in flight always finish); --status shows the hold.
A move that fails is reported and the run goes on with the others; the exit
status is 1 if any failed. Only one rebalance or drain runs at a time.

--background records the run as queued and hands it to a Celery worker: the
command prints the plan and returns at once; --status, --stop and --resume work
on it as on any other run (--resume runs a run no worker has started yet here).

--stop asks the running rebalance (in whatever process) to start no new move;
it stops once the moves in flight have ended. A run whose process died (killed,
machine lost) is "interrupted": --resume first finishes every interrupted move
job, then makes the run's remaining moves with the options it was started with
(or those given with --resume); interrupted drains (drain_shard) are continued
the same way. --stop on an interrupted run abandons it."""

    def add_arguments(self, parser: CommandParser) -> None:
        add_cost_argument(parser)
        parser.add_argument(
            "--min-improvement",
            type=float,
            default=0.002,
            metavar="FRACTION",
            help="Plan a move only if it lowers the cost on the wrong shard by at least this"
            " fraction of the total cost (default 0.002, i.e. 0.2%%: a fleet of up to 500"
            " similar devices balances fully). Raise it to skip small moves; with more"
            " devices lower it (0 allows any move that helps).",
        )
        parser.add_argument(
            "--max-moves", type=int, metavar="N", help="Plan at most N moves (default: no limit)."
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Print the plan and loads; change nothing."
        )
        parser.add_argument(
            "--background",
            action="store_true",
            help="Plan, record the run as queued and hand it to a Celery worker; return at"
            " once. Follow it with --status.",
        )
        parser.add_argument(
            "--stop",
            nargs="?",
            type=int,
            const=0,
            metavar="RUN",
            help="Ask the running rebalance or drain (or run RUN) to start no new move; it"
            " stops once its moves in flight have ended. An interrupted or queued run is"
            " marked stopped at once.",
        )
        parser.add_argument(
            "--status",
            action="store_true",
            help="Show the latest runs (see --last): the options, any throttle hold, and each"
            " planned move with its outcome (moving while in flight), job phase, rows"
            " copied and how long writers were held.",
        )
        parser.add_argument(
            "--last", type=int, default=3, metavar="N", help="Runs shown by --status (default 3)."
        )
        parser.add_argument(
            "--resume",
            action="store_true",
            help="Finish interrupted move jobs, then continue interrupted runs (and run"
            " queued runs no worker has started).",
        )
        add_run_arguments(parser, resumable="--resume")
        parser.add_argument(
            "--json",
            action="store_true",
            help="Print only JSON on stdout: {dry_run, cost, plan, run} for a rebalance"
            " (also with --background, the run then queued), {runs} for --status,"
            " {resumed_jobs, runs} for --resume, {run, state, message} for --stop."
            " Progress bars are off.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.as_json = options["json"]
        modes = [options["stop"] is not None, options["status"], options["resume"]]
        if sum(modes) > 1 or (any(modes) and (options["dry_run"] or options["background"])):
            raise CommandError("give one of --stop, --status, --resume, or plan a rebalance")
        if options["dry_run"] and options["background"]:
            raise CommandError(
                "--dry-run changes nothing: there is nothing to run in the background"
            )
        if options["min_improvement"] < 0 or (options["max_moves"] or 0) < 0:
            raise CommandError("--min-improvement and --max-moves cannot be negative")
        with command_errors():
            given = run_options_given(options)
            if (options["stop"] is not None or options["status"]) and any(
                value is not None for value in given.values()
            ):
                raise CommandError("--stop and --status take none of the options of the moves")
            if options["stop"] is not None:
                self.stop(options["stop"] or None)
            elif options["status"]:
                self.status(options["last"])
            elif options["resume"]:
                self.resume(given)
            else:
                self.rebalance(options, RunOptions().overridden(**given))

    def emit(self, payload: dict[str, Any]) -> None:
        self.stdout.write(json.dumps(payload, indent=2, default=str))

    def make_plan(self, options: dict[str, Any]) -> Plan:
        shards, devices = gather_fleet(options["cost"])
        return plan_rebalance(
            shards,
            devices,
            min_improvement=options["min_improvement"],
            max_moves=options["max_moves"],
        )

    def rebalance(self, options: dict[str, Any], run_options: RunOptions) -> None:
        cost = options["cost"]
        if options["dry_run"]:
            plan = self.make_plan(options)
            if self.as_json:
                self.emit({"dry_run": True, "cost": cost, "plan": plan.as_json(), "run": None})
            else:
                self.stdout.write("\n".join(plan_lines(plan, cost)))
                self.stdout.write("dry run: nothing was changed")
            return
        with exclusive_runner() as lock:
            refuse_interrupted()
            plan = self.make_plan(options)
            if not self.as_json:
                self.stdout.write("\n".join(plan_lines(plan, cost)))
            if not plan.moves:
                if self.as_json:
                    self.emit({"dry_run": False, "cost": cost, "plan": plan.as_json(), "run": None})
                else:
                    self.stdout.write("nothing to move")
                return
            run = create_run(
                lock,
                kind="rebalance",
                cost=cost,
                plan=plan,
                options=run_options,
                queued=options["background"],
            )
            if not options["background"]:
                if not self.as_json:
                    self.stdout.write(f"moves: {run_options.describe()}")
                self.run_to_end(
                    run, lambda: execute(run, lock, MovesProgress(enabled=not self.as_json))
                )
        if options["background"]:  # once the runner lock is free for the worker to take
            self.queue(run)  # shown as queued, however soon a worker starts it
        else:
            run.refresh_from_db()
        if self.as_json:
            self.emit(
                {"dry_run": False, "cost": cost, "plan": plan.as_json(), "run": run_summary(run)}
            )
        elif options["background"]:
            self.stdout.write(
                f"{run.kind} {run.pk} is queued for a Celery worker ({run_options.describe()})."
                f" `rebalance --status` shows its progress, `rebalance --stop {run.pk}` stops it."
            )
        else:
            self.stdout.write("")
            self.stdout.write("\n".join(run_lines(run)))
        self.exit_if_failed([run])

    def queue(self, run: Rebalance) -> None:
        """Hand the queued run to a worker; if the broker cannot take it, nothing is left."""
        try:
            rebalance_run.delay(run.pk)
        except Exception as exc:
            Rebalance.objects.filter(pk=run.pk, state=Rebalance.State.QUEUED).update(
                state=Rebalance.State.STOPPED, error=f"could not be queued: {exc}"
            )
            raise CommandError(
                f"{run.kind} {run.pk} could not be queued ({exc}); it is marked stopped. Run"
                " the rebalance without --background."
            ) from exc

    def continue_hint(self, run: Rebalance) -> str:
        return "`rebalance --resume` finishes any move job it left in flight; then plan again."

    def exit_if_failed(self, runs: list[Rebalance]) -> None:
        if any(counts(run)["failed"] for run in runs):
            raise SystemExit(1)

    def stop(self, run_id: int | None) -> None:
        run, message = request_stop(run_id)
        if self.as_json:
            self.emit({"run": run.pk, "state": run.state, "message": message})
        else:
            self.stdout.write(message)

    def status(self, last: int) -> None:
        runs = list(Rebalance.objects.order_by("-id")[: max(last, 1)])
        if self.as_json:
            self.emit({"runs": [run_summary(run) for run in runs]})
            return
        if not runs:
            self.stdout.write("no rebalance or drain has run yet")
        for run in runs:
            self.stdout.write("\n".join(run_lines(run)))
            self.stdout.write("")

    def resume(self, given: dict[str, Any]) -> None:
        progress = MovesProgress(enabled=not self.as_json)
        resumed: list[Rebalance] = []
        with exclusive_runner() as lock:
            jobs: list[MoveJob] = finish_interrupted_moves(progress)
            for run in interrupted_runs():
                with_options(run, **given)
                self.run_to_end(run, lambda run=run: resume_run(run, lock, progress))
                resumed.append(run)
            for run in queued_runs():
                with_options(run, **given)
                self.run_to_end(run, lambda run=run: start_queued(run, lock, progress))
                resumed.append(run)
        for run in resumed:
            run.refresh_from_db()
        if self.as_json:
            self.emit(
                {
                    "resumed_jobs": [job_summary(job) for job in jobs],
                    "runs": [run_summary(run) for run in resumed],
                }
            )
        else:
            if not jobs and not resumed:
                self.stdout.write("nothing to resume: no interrupted move jobs or runs")
            if jobs:
                self.stdout.write(f"finished {len(jobs)} interrupted move job(s)")
            for run in resumed:
                self.stdout.write("\n".join(run_lines(run)))
                if run.kind.startswith("drain:"):
                    alias = run.kind.split(":", 1)[1]
                    self.stdout.write(f"run `drain_shard {alias}` to retire {alias} once empty")
        self.exit_if_failed(resumed)
