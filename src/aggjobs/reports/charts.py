"""Inline SVG charts drawn in Python: no script, no network, readable offline and in print.

Each chart is one `<svg class="chart">` with a `<title>`; each data point is a `<rect
class="bar">` or `<circle class="point">` carrying `data-series`, `data-hour` and
`data-value`, with a `<title>` tooltip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 760, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 34, 34


@dataclass(frozen=True)
class Series:
    name: str
    values: list[float | None]
    colour: str
    kind: str = "bar"  # "bar" (stacked with the other bars) or "line"


def nice_max(value: float) -> float:
    """A round axis maximum at or above `value` (1, 2, 2.5, 5 x 10^k)."""
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exp:
            return step * exp
    return 10 * exp


def label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def chart(chart_id: str, title: str, labels: list[str], series: list[Series],
          unit: str = "") -> str:
    """A chart of `series` over the categories `labels` (hours): stacked bars and lines."""
    n = len(labels)
    bars = [s for s in series if s.kind == "bar"]
    lines = [s for s in series if s.kind == "line"]
    stacked = [sum((s.values[i] or 0) for s in bars) for i in range(n)]
    peak = max([*stacked, *((v or 0) for s in lines for v in s.values), 0])
    top = nice_max(peak)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(n, 1)

    def y(v: float) -> float:
        return TOP + plot_h - (v / top) * plot_h

    out = [(f'<svg class="chart" id="{escape(chart_id)}" xmlns="http://www.w3.org/2000/svg" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
            f'aria-labelledby="{escape(chart_id)}-title">'),
           f'<title id="{escape(chart_id)}-title">{escape(title)}</title>',
           f'<text class="chart-title" x="{LEFT}" y="20">{escape(title)}</text>']
    # Grid and y axis: five steps.
    for k in range(6):
        v = top * k / 5
        yy = y(v)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{yy:.1f}" '
                   f'y2="{yy:.1f}"/>')
        out.append(f'<text class="tick" x="{LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end">'
                   f'{escape(label(v))}{escape(unit) if k == 5 and unit else ""}</text>')
    for i, text in enumerate(labels):
        if i % 3 == 0:
            out.append(f'<text class="tick" x="{LEFT + slot * (i + 0.5):.1f}" '
                       f'y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{escape(text)}</text>')
    # Stacked bars.
    base = [0.0] * n
    for s in bars:
        for i, v in enumerate(s.values):
            if not v:
                continue
            y0, y1 = y(base[i]), y(base[i] + v)
            base[i] += v
            out.append(
                f'<rect class="bar" data-series="{escape(s.name)}" data-hour="{escape(labels[i])}"'
                f' data-value="{v:g}" x="{LEFT + slot * i + slot * 0.15:.1f}" y="{y1:.1f}" '
                f'width="{slot * 0.7:.1f}" height="{max(y0 - y1, 0.5):.1f}" fill="{s.colour}">'
                f'<title>{escape(labels[i])} UTC, {escape(s.name)}: {v:,.4g}</title></rect>')
    # Lines: a path through the known points (gaps where a value is missing), and the points.
    for s in lines:
        segments: list[list[str]] = [[]]
        for i, v in enumerate(s.values):
            if v is None:
                segments.append([])
                continue
            segments[-1].append(f"{LEFT + slot * (i + 0.5):.1f},{y(v):.1f}")
        for seg in segments:
            if len(seg) > 1:
                out.append(f'<polyline class="line" fill="none" stroke="{s.colour}" '
                           f'stroke-width="2" points="{" ".join(seg)}"/>')
        for i, v in enumerate(s.values):
            if v is None:
                continue
            out.append(
                f'<circle class="point" data-series="{escape(s.name)}" '
                f'data-hour="{escape(labels[i])}" data-value="{v:g}" '
                f'cx="{LEFT + slot * (i + 0.5):.1f}" cy="{y(v):.1f}" r="3" fill="{s.colour}">'
                f'<title>{escape(labels[i])} UTC, {escape(s.name)}: {v:,.4g}</title></circle>')
    out.append(f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" '
               f'y2="{TOP + plot_h}"/>')
    if peak == 0:
        out.append(f'<text class="empty" x="{LEFT + plot_w / 2:.1f}" y="{TOP + plot_h / 2:.1f}" '
                   'text-anchor="middle">no data this day</text>')
    # Legend.
    x = LEFT + 260
    for s in series:
        out.append(f'<rect x="{x}" y="10" width="12" height="12" fill="{s.colour}"/>'
                   f'<text class="legend" x="{x + 16}" y="20">{escape(s.name)}</text>')
        x += 24 + 7 * len(s.name)
    out.append("</svg>")
    return "\n".join(out)
