"""What the rebalance, drain_shard and pin_device commands share: help layout, errors, args."""

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.core.management.base import BaseCommand, CommandError, DjangoHelpFormatter

from core.models import Device, Rebalance
from routers.errors import RoutingError
from shards.moves.protocol import MoveError
from shards.rebalance.locks import RebalanceBusy
from shards.rebalance.options import (
    DEFAULT_MAX_IMPORT_LAG,
    DEFAULT_PARALLEL,
    DEFAULT_PER_SHARD,
    InvalidRunOptions,
    RunOptions,
)
from shards.rebalance.runner import RebalanceError

COST_HELP = (
    "What to balance: 'devices' (each counts 1), 'rows' (a device's rows over every shard"
    " table) or 'bytes' (their size on disk, pg_column_size). Default: rows."
)


class HelpFormatter(DjangoHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the help's paragraphs and the examples' line breaks."""


class OpsCommand(BaseCommand):
    """A command whose --help keeps its layout and ends with examples (`examples`)."""

    examples = ""

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any):
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("epilog", self.examples)
        return super().create_parser(prog_name, subcommand, **kwargs)

    def continue_hint(self, run: Rebalance) -> str:
        """What the operator runs to go on after a run stopped by an error."""
        raise NotImplementedError

    def run_to_end(self, run: Rebalance, work: Callable[[], object]) -> None:
        """Make a recorded run's moves; an unexpected error says how to go on."""
        try:
            work()
        except Exception as exc:
            raise CommandError(
                f"{run.kind} {run.pk} stopped by an error: {exc}. {self.continue_hint(run)}"
            ) from exc


RUN_OPTIONS = (
    "parallel",
    "max_per_source",
    "max_per_target",
    "max_rows_per_second",
    "max_import_lag",
)


def add_run_arguments(parser: argparse.ArgumentParser, *, resumable: str) -> None:
    """How the moves are made: at once, per shard, and the throttle (RunOptions)."""
    group = parser.add_argument_group(
        "how the moves are made",
        "Stored with the run. Not given: the defaults below for a new run, and what\n"
        f"the run was started with for {resumable}.",
    )
    group.add_argument(
        "--parallel",
        type=int,
        metavar="N",
        help=f"Make up to N moves at once, each of a different device (default"
        f" {DEFAULT_PARALLEL}). Small devices' moves mostly wait for commits and overlap"
        " well; large ones are bounded by the shards' disks. Devices uploading meanwhile"
        " see more latency the more moves run at once.",
    )
    group.add_argument(
        "--max-per-source",
        type=int,
        metavar="K",
        help=f"At most K moves at once out of any one shard (default {DEFAULT_PER_SHARD}).",
    )
    group.add_argument(
        "--max-per-target",
        type=int,
        metavar="K",
        help=f"At most K moves at once into any one shard (default {DEFAULT_PER_SHARD})."
        " After adding one shard every move goes into it: raise this with --parallel.",
    )
    group.add_argument(
        "--max-rows-per-second",
        type=float,
        metavar="R",
        help="Start moves so that the rows they copy stay within R a second on average (each"
        " move counts its planned rows, then the rows it really copied). Default 0: no limit.",
    )
    group.add_argument(
        "--max-import-lag",
        type=float,
        metavar="SECONDS",
        help="Start no move from or to a shard whose import lag (the age of the oldest"
        " upload it still has to import) is over SECONDS; moves resume when it falls, and"
        " --status shows the hold. Measured every second. Default"
        f" {DEFAULT_MAX_IMPORT_LAG:g}; 0 turns it off.",
    )


def run_options_given(options: dict[str, Any]) -> dict[str, Any]:
    """The run options given on the command line (None: not given), checked."""
    given = {name: options.get(name) for name in RUN_OPTIONS}
    RunOptions().overridden(**given)  # refuses values out of range before anything changes
    return given


def add_cost_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cost", choices=Rebalance.Cost.values, default=Rebalance.Cost.ROWS, help=COST_HELP
    )


@contextmanager
def command_errors() -> Iterator[None]:
    """Turn the refusals of moves, runs and routing into CommandError (message, exit 1)."""
    try:
        yield
    except (
        MoveError,
        RebalanceBusy,
        RebalanceError,
        RoutingError,
        InvalidRunOptions,
        Device.DoesNotExist,
    ) as exc:
        raise CommandError(str(exc)) from exc
