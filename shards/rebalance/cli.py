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


def add_cost_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cost", choices=Rebalance.Cost.values, default=Rebalance.Cost.ROWS, help=COST_HELP
    )


@contextmanager
def command_errors() -> Iterator[None]:
    """Turn the refusals of moves, runs and routing into CommandError (message, exit 1)."""
    try:
        yield
    except (MoveError, RebalanceBusy, RebalanceError, RoutingError, Device.DoesNotExist) as exc:
        raise CommandError(str(exc)) from exc
