"""How a run makes its moves: how many at once, per-shard limits, and the throttle.

Stored with the run (Rebalance.options) so a resumed or background run keeps the
settings it was started with; a resume may override some of them.

The defaults are for a cluster that serves devices while it rebalances. A small
device's move is a dozen short transactions, not a copy, so two at once give
most of the speed-up measured (docs/benchmarks.md) while uploading devices see
hardly more latency; four doubled their p99. More than two into or out of one
shard would put several bulk copies on one server's disk at once, which is what
devices uploading to that shard would feel. The import lag threshold is far
above a healthy lag (well under a second) and above beat's import kicks
(IMPORT_KICK_SECONDS), so it only bites when imports really fall behind.
"""

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

DEFAULT_PARALLEL = 2
DEFAULT_PER_SHARD = 2
DEFAULT_MAX_IMPORT_LAG = 10.0


def _flag(name: str) -> str:
    return name.replace("_", "-")


class InvalidRunOptions(ValueError):
    """An option out of range; the message names it."""


@dataclass(frozen=True)
class RunOptions:
    parallel: int = DEFAULT_PARALLEL
    max_per_source: int = DEFAULT_PER_SHARD
    max_per_target: int = DEFAULT_PER_SHARD
    max_rows_per_second: float = 0.0  # 0: no limit
    max_import_lag: float = DEFAULT_MAX_IMPORT_LAG  # seconds; 0: do not watch the lag

    def __post_init__(self) -> None:
        for name in ("parallel", "max_per_source", "max_per_target"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidRunOptions(
                    f"--{name.replace('_', '-')} must be 1 or more, not {value}"
                )
        for name in ("max_rows_per_second", "max_import_lag"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0:
                raise InvalidRunOptions(f"--{_flag(name)} must be 0 (off) or more, not {value}")

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "RunOptions":
        """Options stored with a run; a run recorded before they existed ran one move at a time."""
        if not data:
            return cls(parallel=1)
        known = {field.name for field in fields(cls)}
        return cls(**{name: value for name, value in data.items() if name in known})

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def overridden(self, **changes: Any) -> "RunOptions":
        """These options with the given ones changed (None: keep)."""
        return replace(
            self, **{name: value for name, value in changes.items() if value is not None}
        )

    def describe(self) -> str:
        """One line for operators."""
        parts = [
            f"up to {self.parallel} moves at once, at most {self.max_per_source} out of and"
            f" {self.max_per_target} into any one shard"
        ]
        if self.max_rows_per_second:
            parts.append(f"at most {self.max_rows_per_second:g} rows/s")
        if self.max_import_lag:
            parts.append(
                f"holding new moves while a shard's import lag is over {self.max_import_lag:g} s"
            )
        else:
            parts.append("not watching the import lag")
        return "; ".join(parts)
