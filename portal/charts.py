"""Server-rendered SVG charts of a bucketed series: one small panel per metric.

Each metric gets its own panel and y-axis (a temperature and a humidity share no
scale); the mean is a line, the min-max of each bucket a shaded band. Plain SVG
text, so the same markup works inline on the device page and as an <img>.
"""

import math
from datetime import datetime, timedelta

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from shards.series import Bucket, Series

WIDTH = 900
PANEL_HEIGHT = 150
LEFT, RIGHT, TOP, BOTTOM = 60, 16, 24, 22
COLOURS = ["#2563eb", "#d9480f", "#2b8a3e", "#9c36b5", "#0b7285", "#c2255c"]
# A hole of more than this many buckets breaks the line instead of bridging it.
GAP_BUCKETS = 3


def _number(value: float) -> str:
    return f"{value:.4g}"


def _tick_format(step: float) -> str:
    """Enough decimals to tell ticks `step` apart, and no more."""
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    return f"{{:.{min(decimals + 1, 6)}f}}" if step < 1 else "{:.0f}" if step >= 5 else "{:.1f}"


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
    low = min(b.min for b in buckets)
    high = max(b.max for b in buckets)
    if high - low < 1e-9:
        low, high = low - 1, high + 1
    pad = (high - low) * 0.05
    low, high = low - pad, high + pad
    span = series.end - series.start

    def x(bucket: Bucket) -> float:
        middle = bucket.start + series.width / 2
        return LEFT + plot_w * ((middle - series.start) / span)

    def y(value: float) -> float:
        return top + TOP + plot_h * (1 - (value - low) / (high - low))

    parts = [
        f'<rect x="{LEFT}" y="{top + TOP}" width="{plot_w}" height="{plot_h}" class="plot"/>',
        f'<text x="{LEFT}" y="{top + TOP - 8}" class="metric">{escape(metric)}'
        f'<tspan class="now"> {_number(buckets[-1].mean)}</tspan></text>',
    ]
    tick = _tick_format((high - low) / 4)
    for step in range(5):
        value = low + (high - low) * step / 4
        parts.append(
            f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(value):.1f}" y2="{y(value):.1f}"'
            ' class="grid"/>'
            f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" class="tick" text-anchor="end">'
            f"{tick.format(value)}</text>"
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
    metrics = sorted(series.metrics)
    height = PANEL_HEIGHT * max(1, len(metrics))
    label = f"Readings from {series.start:%Y-%m-%d %H:%M} to {series.end:%Y-%m-%d %H:%M} UTC"
    body = [
        _panel(series, metric, series.metrics[metric], i * PANEL_HEIGHT, COLOURS[i % len(COLOURS)])
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
