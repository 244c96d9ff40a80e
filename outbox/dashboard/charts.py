"""Server-side SVG charts for the dashboard: throughput as bars, end-to-end lag as a line.

Both take a mapping from the start of a time bucket (timezone-aware, aligned on ``step`` from
``start``) to a value, and return an ``<svg>`` fragment the template marks safe. Every piece of
text is escaped here; colours and fonts come from CSS through the class names ``chart``,
``grid``, ``axis``, ``bar``, ``line``, ``dot`` and ``empty``. The output depends only on the
arguments, so the same data always renders the same string.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Callable, Mapping

WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 24, 12, 28
PLOT_WIDTH = WIDTH - LEFT - RIGHT
BASELINE = HEIGHT - BOTTOM
PLOT_HEIGHT = BASELINE - TOP
_TICK_GAPS = tuple(
    dt.timedelta(minutes=m) for m in (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440)
)
_MAX_TICKS = 4
_GRIDLINES = {1: 4, 2: 4, 5: 2, 10: 4}  # nice maximum's leading digit -> labelled gridlines
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_Format = Callable[[float], str]


def bar_chart(
    points: Mapping[dt.datetime, float],
    *,
    start: dt.datetime,
    end: dt.datetime,
    step: dt.timedelta,
    label: str,
    unit: str,
) -> str:
    """One bar per bucket from ``start`` to ``end`` (a missing bucket counts 0, keys off the
    buckets are ignored); ``unit`` such as ``events/min`` follows each value in the tooltips."""
    buckets = _buckets(start, end, step)
    values = [max(points.get(bucket, 0.0), 0.0) for bucket in buckets]
    stop, (top, gridlines) = buckets[-1] + step, _nice_maximum(max(values))
    width = PLOT_WIDTH / len(buckets) * 0.8
    body: list[str] = []
    for bucket, value in zip(buckets, values, strict=True):
        x, y = _x(bucket + step * 0.1, start, stop), _y(value, top)
        tip = html.escape(f"{_clock(bucket)} UTC: {_number(value)} {unit}")
        body.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{width:.1f}"'
            f' height="{BASELINE - y:.1f}"><title>{tip}</title></rect>'
        )
    if any(values):
        peak = max(range(len(values)), key=values.__getitem__)
        summary = f"peak {_number(values[peak])} {unit} at {_clock(buckets[peak])} UTC"
    else:
        body, summary = [_empty("no events in this period")], "no events in this period"
    return _svg(label, summary, _axes(start, stop, (top, gridlines), _compact) + body)


def line_chart(
    points: Mapping[dt.datetime, float],
    *,
    start: dt.datetime,
    end: dt.datetime,
    step: dt.timedelta,
    label: str,
    unit: str,
) -> str:
    """A line through each bucket's value in seconds, broken where a bucket is missing; each
    value is also a dot whose tooltip is the duration followed by ``unit`` (such as ``lag``)."""
    buckets = _buckets(start, end, step)
    present = {bucket: points[bucket] for bucket in buckets if bucket in points}
    stop, (top, gridlines) = buckets[-1] + step, _nice_maximum(max(present.values(), default=0))
    segments: list[list[str]] = [[]]
    dots: list[str] = []
    for bucket in buckets:
        if bucket not in present:
            segments.append([])
            continue
        x, y = _x(bucket + step / 2, start, stop), _y(present[bucket], top)
        segments[-1].append(f"{x:.1f},{y:.1f}")
        tip = html.escape(f"{_clock(bucket)} UTC: {_duration(present[bucket])} {unit}")
        dots.append(
            f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="2.5"><title>{tip}</title></circle>'
        )
    body = [f'<polyline class="line" points="{" ".join(s)}"/>' for s in segments if len(s) > 1]
    if present:
        peak = max(present, key=present.__getitem__)
        summary = f"peak {_duration(present[peak])} {unit} at {_clock(peak)} UTC"
    else:
        dots, summary = [_empty("no deliveries in this period")], "no deliveries in this period"
    return _svg(label, summary, _axes(start, stop, (top, gridlines), _duration) + body + dots)


def _buckets(start: dt.datetime, end: dt.datetime, step: dt.timedelta) -> list[dt.datetime]:
    if start.tzinfo is None or step <= dt.timedelta(0) or end <= start:
        raise ValueError("charts need an aware start before end and a positive step")
    return [start + step * i for i in range(math.ceil((end - start) / step))]


def _nice_maximum(value: float) -> tuple[float, int]:
    """The smallest 1, 2 or 5 x 10^n at least ``value`` (and at least 1), and its gridlines."""
    power = 10 ** math.floor(math.log10(value)) if value > 1 else 1
    leading = next((digit for digit in (1, 2, 5) if digit * power >= value), 10)
    return float(leading * power), _GRIDLINES[leading]


def _axes(
    start: dt.datetime, stop: dt.datetime, scale: tuple[float, int], fmt: _Format
) -> list[str]:
    """The y axis with labelled gridlines up to ``top``, the baseline and the time ticks."""
    top, gridlines = scale
    parts = [f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{BASELINE}"/>']
    for k in range(gridlines + 1):
        value = top * k / gridlines
        y = _y(value, top)
        parts.append(
            f'<line class="{"grid" if k else "axis"}" x1="{LEFT}" y1="{y:.1f}"'
            f' x2="{WIDTH - RIGHT}" y2="{y:.1f}"/>'
            f'<text class="axis" x="{LEFT - 6}" y="{y:.1f}" dy="0.35em" text-anchor="end">'
            f"{html.escape(fmt(value))}</text>"
        )
    interval = next(
        (gap for gap in _TICK_GAPS if (stop - start) / gap <= _MAX_TICKS), _TICK_GAPS[-1]
    )
    tick = start + (-(start - _EPOCH)) % interval
    while tick <= stop:
        x = _x(tick, start, stop)
        parts.append(
            f'<line class="axis" x1="{x:.1f}" y1="{BASELINE}" x2="{x:.1f}" y2="{BASELINE + 4}"/>'
            f'<text class="axis" x="{x:.1f}" y="{BASELINE + 16}" text-anchor="middle">'
            f"{html.escape(_clock(tick))}</text>"
        )
        tick += interval
    return parts


def _svg(label: str, summary: str, parts: list[str]) -> str:
    title = html.escape(f"{label}: {summary}")
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" font-size="11"'
        f' role="img" aria-label="{title}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{title}</title>{''.join(parts)}</svg>"
    )


def _empty(message: str) -> str:
    centre = f'x="{LEFT + PLOT_WIDTH / 2:.1f}" y="{TOP + PLOT_HEIGHT / 2:.1f}"'
    return f'<text class="empty" {centre} text-anchor="middle">{html.escape(message)}</text>'


def _x(moment: dt.datetime, start: dt.datetime, stop: dt.datetime) -> float:
    return LEFT + (moment - start) / (stop - start) * PLOT_WIDTH


def _y(value: float, top: float) -> float:
    return BASELINE - min(max(value, 0.0), top) / top * PLOT_HEIGHT


def _clock(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%H:%M")


def _number(value: float) -> str:
    """Full precision for tooltips: ``1,234``, ``12.5``."""
    return f"{value:,.1f}".removesuffix(".0")


def _compact(value: float) -> str:
    """Short axis labels: ``750``, ``1.2k``, ``3.4M``, ``0.25``."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.1f}".removesuffix(".0") + suffix
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _duration(seconds: float) -> str:
    """Lag as people read it: ``350ms``, ``4.2s``, ``3m10s``, ``2h05m``."""
    if round(seconds * 1000) < 1000:
        return f"{round(seconds * 1000)}ms" if seconds > 0 else "0s"
    if round(seconds * 10) < 600:
        return f"{seconds:.1f}".removesuffix(".0") + "s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
