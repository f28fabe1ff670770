"""SVG charts drawn on the server: a histogram with its count axis, and the checked-out trend."""

from __future__ import annotations

import math
from dataclasses import dataclass

from apps.dashboard.snapshot import Distribution

WIDTH, HEIGHT = 560, 190
LEFT, RIGHT, TOP, BOTTOM = 46, 8, 14, 44  # room for the count axis, bar counts and bucket labels


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if math.isinf(seconds):
        return "∞"
    if seconds < 0.001:
        return f"{seconds * 1_000_000:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1000:.3g} ms"
    return f"{seconds:.3g} s"


def format_count(value: float | None) -> str:
    return "–" if value is None else ("∞" if math.isinf(value) else f"{value:.3g}")


def format_whole_quantile(value: float | None) -> str:
    """A quantile of whole numbers (checkouts per request), interpolated within its bucket: the
    next whole number up, since 0.95 checkouts is no answer to how many a request made."""
    return format_count(value if value is None or math.isinf(value) else math.ceil(value - 1e-9))


def short_seconds(seconds: float) -> str:
    """A bucket bound for an axis label: 100µs, 2.5ms, 1s."""
    if seconds < 0.001:
        return f"{seconds * 1_000_000:g}µs"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def short_count(value: float) -> str:
    """A count for a tick or a bar: 7, 950, 12k, 3.4M."""
    if value >= 1_000_000:
        return f"{value / 1_000_000:.3g}M"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    return f"{value:.0f}"


def nice_ticks(top: float, count: int = 4) -> list[float]:
    """0 and a few round steps (1, 2 or 5 times a power of ten) up to at least `top`."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    if step < 1:
        step = 1.0  # counts and connections are whole numbers
    ticks = [0.0]
    while ticks[-1] < top:
        ticks.append(ticks[-1] + step)
    return ticks


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    count: int
    label: str

    @property
    def middle(self) -> float:
        return self.x + self.width / 2

    @property
    def count_label(self) -> str:
        return short_count(self.count) if self.count else ""


@dataclass(frozen=True)
class Tick:
    position: float  # y for a count axis, x for a time axis
    label: str


@dataclass(frozen=True)
class HistogramChart:
    bars: list[Bar]
    ticks: list[Tick]  # the count axis
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    plot_bottom: int = HEIGHT - BOTTOM
    label_y: int = HEIGHT - BOTTOM + 12


def histogram(dist: Distribution, label=short_seconds) -> HistogramChart | None:
    """Bars of the per-bucket counts, on a count axis that starts at 0; None with nothing to draw."""
    if not dist.bounds or not any(dist.counts):
        return None
    ticks = nice_ticks(max(dist.counts))
    top, plot_height = ticks[-1], HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / len(dist.bounds)
    bars = []
    for i, (bound, count) in enumerate(zip(dist.bounds, dist.counts, strict=True)):
        height = plot_height * count / top
        bars.append(
            Bar(
                x=LEFT + i * slot + 2,
                y=HEIGHT - BOTTOM - height,
                width=slot - 4,
                height=height,
                count=round(count),
                label=("≤" + label(bound)) if not math.isinf(bound) else "more",
            )
        )
    axis = [Tick(position=HEIGHT - BOTTOM - plot_height * t / top, label=short_count(t)) for t in ticks]
    return HistogramChart(bars=bars, ticks=axis)


# As wide as the page, so its text reads at the size of the histograms'.
TREND_WIDTH, TREND_HEIGHT = 1100, 200
TREND_LEFT, TREND_RIGHT, TREND_TOP, TREND_BOTTOM = 52, 14, 10, 28


@dataclass(frozen=True)
class Series:
    name: str
    css_class: str
    points: str  # SVG polyline points
    limit_y: float | None  # where the pool's size sits, as a dashed line


@dataclass(frozen=True)
class TrendChart:
    series: list[Series]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    seconds: int
    width: int = TREND_WIDTH
    height: int = TREND_HEIGHT
    left: int = TREND_LEFT
    right: int = TREND_WIDTH - TREND_RIGHT
    top: int = TREND_TOP
    bottom: int = TREND_HEIGHT - TREND_BOTTOM
    middle: int = (TREND_TOP + TREND_HEIGHT - TREND_BOTTOM) // 2


def trend(lines: list[tuple[str, str, list[tuple[float, float]], float]], seconds: int) -> TrendChart:
    """Connections checked out over the last `seconds`: one line per site, time running to "now".

    `lines` holds (name, css class, [(seconds ago, checked out)], pool size) for each site.
    """
    highest = max([1.0] + [size for *_, size in lines] + [v for _, _, points, _ in lines for _, v in points])
    ticks = nice_ticks(highest, count=4)
    top = ticks[-1]
    plot_width = TREND_WIDTH - TREND_LEFT - TREND_RIGHT
    plot_height = TREND_HEIGHT - TREND_TOP - TREND_BOTTOM

    def x(ago: float) -> float:
        return TREND_LEFT + plot_width * (1 - ago / seconds)

    def y(value: float) -> float:
        return TREND_TOP + plot_height * (1 - value / top)

    series = [
        Series(
            name=name,
            css_class=css_class,
            points=" ".join(f"{x(ago):.1f},{y(value):.1f}" for ago, value in points if ago <= seconds),
            limit_y=y(size) if size else None,
        )
        for name, css_class, points, size in lines
    ]
    step = 30 if seconds > 60 else 10
    x_ticks = [
        Tick(position=x(ago), label="now" if ago == 0 else f"−{ago} s") for ago in range(seconds, -1, -step)
    ]
    y_ticks = [Tick(position=y(t), label=f"{t:.0f}") for t in ticks]
    return TrendChart(series=series, y_ticks=y_ticks, x_ticks=x_ticks, seconds=seconds)
