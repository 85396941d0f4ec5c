"""The time range a chart, live refresh or export covers, from the query string.

Either a preset (`?range=24h`, ending now) or explicit `?start=...&end=...` in ISO
8601. Anything else is a BadRange, which views answer with a 400 naming the problem.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from django.utils import timezone

PRESETS = {
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
DEFAULT_PRESET = "1h"
# A preset's end lies a little in the future, so a device whose clock runs a few
# seconds ahead still shows up on a live chart.
CLOCK_SKEW = timedelta(seconds=30)
MAX_SPAN = timedelta(days=92)


class BadRange(ValueError):
    """The query string does not name a usable time range."""


@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime
    preset: str | None = None

    def query(self) -> str:
        """The query string that names this range again (presets stay relative to now)."""
        if self.preset:
            return urlencode({"range": self.preset})
        return urlencode({"start": self.start.isoformat(), "end": self.end.isoformat()})


def parse_time(name: str, text: str) -> datetime:
    text = text.strip()
    if " " in text and "T" in text:
        text = text.replace(" ", "+")  # an unescaped '+' in a URL arrives as a space
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise BadRange(f"{name} must be an ISO 8601 time such as 2026-01-31T12:00:00Z") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    if not 1 < value.year < 9999:
        raise BadRange(f"{name} is out of range")
    return value.astimezone(UTC)


def range_from(params: Mapping[str, str], now: datetime | None = None) -> TimeRange:
    if "start" in params or "end" in params:
        if not params.get("start") or not params.get("end"):
            raise BadRange("give both start and end, or a range such as range=24h")
        start = parse_time("start", params["start"])
        end = parse_time("end", params["end"])
        if start >= end:
            raise BadRange("start must be before end")
        if end - start > MAX_SPAN:
            raise BadRange(f"a range may cover at most {MAX_SPAN.days} days")
        return TimeRange(start, end)
    preset = params.get("range") or DEFAULT_PRESET
    if preset not in PRESETS:
        raise BadRange(f"range must be one of {', '.join(PRESETS)}")
    end = (now or timezone.now()) + CLOCK_SKEW
    return TimeRange(end - PRESETS[preset], end, preset)
