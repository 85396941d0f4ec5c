"""The throttle of a run: when the next move may start.

Two rules, as Vitess's throttler applies to its own background copies: a pace
(`--max-rows-per-second`) and a back-off on a health figure of the shards. The
figure is the import lag: how long the oldest upload a shard owns has waited
for its import (shards.stats.import_lag_seconds). It is real (devices' data
waits while it is high), cheap (one index probe per shard) and it rises when a
shard's database or the import workers are overloaded, which is what moves must
not make worse. While a move's source or target is over the threshold that move
does not start; moves between other shards still may. Moves already running
always finish: stopping one halfway would only leave its device fenced longer.
"""

import time
from collections.abc import Callable, Iterable

from shards.rebalance.options import RunOptions
from shards.stats import import_lag_seconds

Clock = Callable[[], float]
# How often each shard's import lag is measured while a run is looking for moves.
LAG_CHECK_SECONDS = 1.0


class RowPacer:
    """Moves start so that the rows they copy stay within `rate` a second.

    A move is charged its expected rows when it starts, corrected to the rows it
    really copied when it ends; the next move may start once the time the rows
    charged so far need at `rate` has passed. Idle time is not saved up, so a
    pause (a hold, a stop) is never followed by a burst.
    """

    def __init__(self, rate: float, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self.free_at = clock()

    def wait_seconds(self) -> float:
        if not self.rate:
            return 0.0
        return max(0.0, self.free_at - self.clock())

    def charge(self, rows: float) -> None:
        if self.rate:
            self.free_at = max(self.free_at, self.clock()) + rows / self.rate

    def correct(self, charged: float, actual: float) -> None:
        """A move copied `actual` rows where `charged` were expected."""
        if self.rate:
            self.free_at += (actual - charged) / self.rate


class ImportLag:
    """Each shard's import lag, measured at most every LAG_CHECK_SECONDS."""

    def __init__(
        self,
        threshold: float,
        measure: Callable[[str], float] = import_lag_seconds,
        clock: Clock = time.monotonic,
        check_every: float = LAG_CHECK_SECONDS,
    ) -> None:
        self.threshold = threshold
        self.measure = measure
        self.clock = clock
        self.check_every = check_every
        self.figures: dict[str, tuple[float, str]] = {}  # alias -> (when, why it is over or "")

    def over(self, alias: str) -> str:
        """Why `alias` must not take part in a new move now; empty when it may."""
        if not self.threshold:
            return ""
        measured = self.figures.get(alias)
        if measured is None or self.clock() - measured[0] >= self.check_every:
            measured = self.clock(), self._judge(alias)
            self.figures[alias] = measured
        return measured[1]

    def _judge(self, alias: str) -> str:
        try:
            lag = self.measure(alias)
        except Exception as exc:  # a shard that cannot say how it is gets no new moves
            return f"{alias}'s import lag cannot be read ({str(exc).strip() or type(exc).__name__})"
        if lag > self.threshold:
            return (
                f"{alias}'s import lag is {lag:.1f} s, over --max-import-lag {self.threshold:g} s"
            )
        return ""


class Throttle:
    """Picks the next move allowed to start, or says why none may."""

    def __init__(self, options: RunOptions, clock: Clock = time.monotonic) -> None:
        self.pacer = RowPacer(options.max_rows_per_second, clock)
        self.lag = ImportLag(options.max_import_lag, clock=clock)

    def choose(self, candidates: Iterable[dict]) -> tuple[dict | None, str]:
        """The first candidate (a plan entry) that may start, or None and why not (empty
        when there was no candidate: nothing is held then)."""
        if self.pacer.wait_seconds():
            return None, f"pacing the moves to --max-rows-per-second {self.pacer.rate:g}"
        first_reason = ""
        for entry in candidates:
            reason = self.lag.over(entry["source"]) or self.lag.over(entry["target"])
            if not reason:
                return entry, ""
            first_reason = first_reason or reason
        return None, first_reason
