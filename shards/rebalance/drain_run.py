"""The moves of a drain, shared by `manage.py drain_shard` and the admin's background drain.

Under the one-runner lock: mark the shard draining, finish interrupted moves,
continue an interrupted drain of it, then move whatever is still on it as a new
recorded run. Retiring the shard afterwards is `try_retire`'s job.
"""

import logging
from collections.abc import Callable
from typing import Any

from core.models import Rebalance
from shards.rebalance.costs import gather_fleet
from shards.rebalance.drain import drain_kind, mark_draining
from shards.rebalance.locks import exclusive_runner
from shards.rebalance.options import RunOptions
from shards.rebalance.planner import Plan, plan_drain
from shards.rebalance.progress import MovesProgress
from shards.rebalance.report import plan_lines
from shards.rebalance.runner import (
    create_run,
    execute,
    finish_interrupted_moves,
    refuse_interrupted,
    resume_run,
    with_options,
)

logger = logging.getLogger(__name__)

# Runs one recorded run's work; the command turns an error into a "run it again" hint.
RunStep = Callable[[Rebalance, Callable[[], object]], None]


def _just_run(run: Rebalance, work: Callable[[], object]) -> None:
    work()


def _log_blocked(plan: Plan) -> None:
    logger.warning("drain: %d pinned devices stay", len(plan.blocked))


def move_devices_off(
    alias: str,
    cost: str,
    *,
    include_pinned: bool = False,
    progress: MovesProgress | None = None,
    run_step: RunStep = _just_run,
    say: Callable[[str], None] = logger.info,
    on_blocked: Callable[[Plan], None] = _log_blocked,
    options: dict[str, Any] | None = None,
) -> tuple[Plan, list[Rebalance]]:
    """Continue an interrupted drain of `alias`, then move what is still on it.

    `options`: RunOptions fields to set (None values keep the defaults, or what an
    interrupted drain was started with).
    """
    kind = drain_kind(alias)
    options = options or {}
    new_options = RunOptions().overridden(**options)
    runs = []
    with exclusive_runner() as lock:
        earlier = refuse_interrupted(except_kind=kind)
        mark_draining(alias)
        say(f"{alias} is draining: no new devices go there")
        finish_interrupted_moves(progress)
        for run in earlier:
            say(f"continuing the interrupted {run.kind} {run.pk}")
            with_options(run, **options)
            run_step(run, lambda run=run: resume_run(run, lock, progress))
            runs.append(run)
        shards, devices = gather_fleet(cost)
        plan = plan_drain(shards, devices, alias, include_pinned=include_pinned)
        if plan.blocked:  # pinned since the caller checked
            on_blocked(plan)
        say("\n".join(plan_lines(plan, cost)))
        if plan.moves:
            run = create_run(lock, kind=kind, cost=cost, plan=plan, options=new_options)
            run_step(run, lambda: execute(run, lock, progress))
            runs.append(run)
    return plan, runs
