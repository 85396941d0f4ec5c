"""Server-rendered SVG charts of a bucketed series: one small panel per metric.

Each metric gets its own panel and y-axis (a temperature and a humidity share no
scale); the mean is a line, the min-max of each bucket a shaded band. Plain SVG
text, so the same markup works inline on the device page and as an <img>.
"""

import math
import sys
from datetime import datetime, timedelta

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from portal.numbers import SIGNIFICANT_DIGITS, format_value
from shards.series import Bucket, Series

WIDTH = 900
PANEL_HEIGHT = 150
LEFT, RIGHT, TOP, BOTTOM = 76, 16, 24, 22  # room for a tick label such as -8.99e+307
COLOURS = ["#2563eb", "#d9480f", "#2b8a3e", "#9c36b5", "#0b7285", "#c2255c"]
# A hole of more than this many buckets breaks the line instead of bridging it.
GAP_BUCKETS = 3
LARGEST = sys.float_info.max


def y_range(buckets: list[Bucket]) -> tuple[float, float]:
    """The y-axis: the buckets' range with 5% to spare each side, within the float range.

    Any finite float is a legal reading, so the span of 1.7e308 and -1.7e308 is past
    the float range itself: spans are taken as halves, and bounds stop at the largest
    float.
    """
    low = min(b.min for b in buckets)
    high = max(b.max for b in buckets)
    if high - low < 1e-9:  # flat: a band around it, wide enough to tell at its magnitude
        margin = max(1.0, abs(low) / 20)
        low, high = low - margin, high + margin
    else:
        pad = (high / 2 - low / 2) / 10
        low, high = low - pad, high + pad
    return max(low, -LARGEST), min(high, LARGEST)


def between(low: float, high: float, fraction: float) -> float:
    """The point `fraction` of the way from low to high, with no overflow on the way."""
    return low * (1 - fraction) + high * fraction


def tick_digits(low: float, high: float) -> int:
    """Significant digits that tell the axis's five ticks apart, and no more; whole
    numbers are written out while they have at most six digits."""
    step, magnitude = high / 4 - low / 4, max(abs(low), abs(high))
    if step <= 0 or magnitude == 0:
        return 2
    order = math.floor(math.log10(magnitude))
    digits = max(2, order - math.floor(math.log10(step)) + 2)
    if digits <= order + 1 <= SIGNIFICANT_DIGITS:
        digits = order + 1
    return min(digits, SIGNIFICANT_DIGITS)


def drawable(bucket: Bucket) -> bool:
    """False for a NaN or infinity: the API never takes one, but a row written by hand may
    hold it, and one such coordinate breaks the whole SVG."""
    return all(math.isfinite(v) for v in (bucket.min, bucket.max, bucket.mean))


def width_label(width: timedelta) -> str:
    """A bucket width as people say it: 10 s, 5 min, 2 h, 1 d."""
    seconds = int(width.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _time_label(ts: datetime, span: timedelta) -> str:
    return ts.strftime("%H:%M" if span <= timedelta(days=1) else "%m-%d %H:%M")


def _runs(buckets: list[Bucket], width: timedelta) -> list[list[Bucket]]:
    """Buckets split where data is missing, so a gap shows as a gap."""
    runs: list[list[Bucket]] = []
    for bucket in buckets:
        if runs and bucket.start - runs[-1][-1].start <= width * GAP_BUCKETS:
            runs[-1].append(bucket)
        else:
            runs.append([bucket])
    return runs


def _panel(series: Series, metric: str, buckets: list[Bucket], top: int, colour: str) -> str:
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = PANEL_HEIGHT - TOP - BOTTOM
    low, high = y_range(buckets)
    half_height = high / 2 - low / 2
    span = series.end - series.start

    def x(bucket: Bucket) -> float:
        middle = bucket.start + series.width / 2
        return LEFT + plot_w * ((middle - series.start) / span)

    def y(value: float) -> float:
        return top + TOP + plot_h * (1 - (value / 2 - low / 2) / half_height)

    parts = [
        f'<rect x="{LEFT}" y="{top + TOP}" width="{plot_w}" height="{plot_h}" class="plot"/>',
        f'<text x="{LEFT}" y="{top + TOP - 8}" class="metric">{escape(metric)}'
        f'<tspan class="now"> {format_value(buckets[-1].mean)}</tspan></text>',
    ]
    digits = tick_digits(low, high)
    for step in range(5):
        value = between(low, high, step / 4)
        parts.append(
            f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(value):.1f}" y2="{y(value):.1f}"'
            ' class="grid"/>'
            f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" class="tick" text-anchor="end">'
            f"{format_value(value, digits)}</text>"
        )
    for fraction, anchor in ((0, "start"), (0.5, "middle"), (1, "end")):
        label = _time_label(series.start + span * fraction, span)
        parts.append(
            f'<text x="{LEFT + plot_w * fraction:.1f}" y="{top + PANEL_HEIGHT - 6}" class="tick"'
            f' text-anchor="{anchor}">{label}</text>'
        )
    for run in _runs(buckets, series.width):
        upper = [f"{x(b):.1f},{y(b.max):.1f}" for b in run]
        lower = [f"{x(b):.1f},{y(b.min):.1f}" for b in reversed(run)]
        mean = " ".join(f"{x(b):.1f},{y(b.mean):.1f}" for b in run)
        parts.append(
            f'<polygon points="{" ".join(upper + lower)}" fill="{colour}" class="band"/>'
            f'<polyline points="{mean}" stroke="{colour}" class="mean"/>'
        )
        if len(run) == 1:
            parts.append(
                f'<circle cx="{x(run[0]):.1f}" cy="{y(run[0].mean):.1f}" r="3.5" fill="{colour}"/>'
            )
    return "".join(parts)


STYLE = (
    "<style>.plot{fill:#fbfcfe;stroke:#d5dbe5}.grid{stroke:#e7ebf1}"
    ".tick{font:11px sans-serif;fill:#5b6677}.metric{font:600 13px sans-serif;fill:#1f2733}"
    ".now{font-weight:400;fill:#5b6677}.band{fill-opacity:.18;stroke:none}"
    ".mean{fill:none;stroke-width:1.6;stroke-linejoin:round}"
    ".empty{font:14px sans-serif;fill:#5b6677}</style>"
)


def chart_svg(series: Series) -> SafeString:
    """The whole chart as one <svg> element."""
    drawn = {
        metric: [b for b in buckets if drawable(b)] for metric, buckets in series.metrics.items()
    }
    metrics = sorted(metric for metric, buckets in drawn.items() if buckets)
    height = PANEL_HEIGHT * max(1, len(metrics))
    label = f"Readings from {series.start:%Y-%m-%d %H:%M} to {series.end:%Y-%m-%d %H:%M} UTC"
    body = [
        _panel(series, metric, drawn[metric], i * PANEL_HEIGHT, COLOURS[i % len(COLOURS)])
        for i, metric in enumerate(metrics)
    ]
    if not metrics:
        body.append(
            f'<text x="{WIDTH / 2}" y="{PANEL_HEIGHT / 2}" class="empty" text-anchor="middle">'
            "No readings in this range</text>"
        )
    return mark_safe(
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}"'
        f' width="{WIDTH}" height="{height}" role="img" aria-label="{label}">'
        f"<title>{label}</title>{STYLE}{''.join(body)}</svg>"
    )
