"""Time buckets: where they start, and the minute buckets the rollup step hands the rules."""

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from shards.analysis.aggregates import bucket_mean

# Every bucket (rollups, pending marks, chart buckets) is date_bin()ned on this origin,
# so minutes, hours and days are UTC ones whatever the session's time zone, and a
# chart bucket is a whole number of rollup buckets.
BUCKET_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class MinuteBucket:
    """One device's readings of one metric in one minute, as now stored in the rollups."""

    device_id: int
    metric: str
    start: datetime
    count: int
    min: float
    max: float
    sum: Decimal | float  # numeric in the rollups: exact, and it cannot overflow

    @property
    def mean(self) -> float:
        return bucket_mean(self.sum, self.count, self.min, self.max)
