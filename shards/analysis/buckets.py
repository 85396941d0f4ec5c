"""What the rollup step hands the alert rules: the minute buckets it has just recomputed."""

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class MinuteBucket:
    """One device's readings of one metric in one minute, as now stored in the rollups."""

    device_id: int
    metric: str
    start: datetime
    count: int
    min: float
    max: float
    sum: float

    @property
    def mean(self) -> float:
        return self.sum / self.count
