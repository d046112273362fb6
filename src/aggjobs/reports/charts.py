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


@dataclass(frozen=True)
class Plot:
    """The plotting area of a chart of `n` categories whose y axis runs from 0 to `top`."""

    n: int
    top: float
    width: float = WIDTH - LEFT - RIGHT
    height: float = HEIGHT - TOP - BOTTOM

    @property
    def slot(self) -> float:
        return self.width / max(self.n, 1)

    def y(self, v: float) -> float:
        return TOP + self.height - (v / self.top) * self.height

    def x_mid(self, i: int) -> float:
        return LEFT + self.slot * (i + 0.5)


def chart(chart_id: str, title: str, labels: list[str], series: list[Series],
          unit: str = "") -> str:
    """A chart of `series` over the categories `labels` (hours): stacked bars and lines."""
    bars = [s for s in series if s.kind == "bar"]
    lines = [s for s in series if s.kind == "line"]
    peak = highest(len(labels), bars, lines)
    plot = Plot(len(labels), nice_max(peak))
    out = [*frame(chart_id, title), *y_axis(plot, unit), *x_labels(plot, labels),
           *stacked_bars(plot, labels, bars)]
    for s in lines:
        out += line(plot, labels, s)
    out.append(f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot.height}" '
               f'y2="{TOP + plot.height}"/>')
    if peak == 0:
        out.append(f'<text class="empty" x="{LEFT + plot.width / 2:.1f}" '
                   f'y="{TOP + plot.height / 2:.1f}" text-anchor="middle">no data this day</text>')
    out += legend(series)
    out.append("</svg>")
    return "\n".join(out)


def highest(n: int, bars: list[Series], lines: list[Series]) -> float:
    """The highest stack of bars or point of a line (0 when there is none)."""
    stacked = [sum((s.values[i] or 0) for s in bars) for i in range(n)]
    return max([*stacked, *((v or 0) for s in lines for v in s.values), 0])


def frame(chart_id: str, title: str) -> list[str]:
    """The opening `<svg>` and the chart's title."""
    return [(f'<svg class="chart" id="{escape(chart_id)}" xmlns="http://www.w3.org/2000/svg" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
             f'aria-labelledby="{escape(chart_id)}-title">'),
            f'<title id="{escape(chart_id)}-title">{escape(title)}</title>',
            f'<text class="chart-title" x="{LEFT}" y="20">{escape(title)}</text>']


def y_axis(plot: Plot, unit: str) -> list[str]:
    """Grid and y axis: five steps, the unit after the top one."""
    out = []
    for k in range(6):
        v = plot.top * k / 5
        yy = plot.y(v)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{yy:.1f}" '
                   f'y2="{yy:.1f}"/>')
        out.append(f'<text class="tick" x="{LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end">'
                   f'{escape(label(v))}{escape(unit) if k == 5 and unit else ""}</text>')
    return out


def x_labels(plot: Plot, labels: list[str]) -> list[str]:
    """Every third category's label under the x axis."""
    return [f'<text class="tick" x="{plot.x_mid(i):.1f}" '
            f'y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{escape(text)}</text>'
            for i, text in enumerate(labels) if i % 3 == 0]


def stacked_bars(plot: Plot, labels: list[str], bars: list[Series]) -> list[str]:
    """The bar series, stacked in their order; a missing or zero value draws nothing."""
    out = []
    base = [0.0] * plot.n
    for s in bars:
        for i, v in enumerate(s.values):
            if not v:
                continue
            y0, y1 = plot.y(base[i]), plot.y(base[i] + v)
            base[i] += v
            out.append(
                f'<rect class="bar" data-series="{escape(s.name)}" data-hour="{escape(labels[i])}"'
                f' data-value="{v:g}" x="{LEFT + plot.slot * i + plot.slot * 0.15:.1f}" '
                f'y="{y1:.1f}" width="{plot.slot * 0.7:.1f}" height="{max(y0 - y1, 0.5):.1f}" '
                f'fill="{s.colour}"><title>{escape(labels[i])} UTC, {escape(s.name)}: '
                f'{v:,.4g}</title></rect>')
    return out


def line(plot: Plot, labels: list[str], s: Series) -> list[str]:
    """A line series: a path through the known points (gaps where a value is missing), and
    the points."""
    segments: list[list[str]] = [[]]
    for i, v in enumerate(s.values):
        if v is None:
            segments.append([])
            continue
        segments[-1].append(f"{plot.x_mid(i):.1f},{plot.y(v):.1f}")
    out = [f'<polyline class="line" fill="none" stroke="{s.colour}" '
           f'stroke-width="2" points="{" ".join(seg)}"/>' for seg in segments if len(seg) > 1]
    for i, v in enumerate(s.values):
        if v is None:
            continue
        out.append(
            f'<circle class="point" data-series="{escape(s.name)}" '
            f'data-hour="{escape(labels[i])}" data-value="{v:g}" '
            f'cx="{plot.x_mid(i):.1f}" cy="{plot.y(v):.1f}" r="3" fill="{s.colour}">'
            f'<title>{escape(labels[i])} UTC, {escape(s.name)}: {v:,.4g}</title></circle>')
    return out


def legend(series: list[Series]) -> list[str]:
    """A coloured square and the name of each series, in a row at the top."""
    out = []
    x = LEFT + 260
    for s in series:
        out.append(f'<rect x="{x}" y="10" width="12" height="12" fill="{s.colour}"/>'
                   f'<text class="legend" x="{x + 16}" y="20">{escape(s.name)}</text>')
        x += 24 + 7 * len(s.name)
    return out
