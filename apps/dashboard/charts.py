"""SVG bar charts of a distribution, drawn on the server."""

from __future__ import annotations

import math
from dataclasses import dataclass

from apps.dashboard.snapshot import Distribution

WIDTH, HEIGHT, LABEL_SPACE = 560, 160, 42
LEFT = 22  # room for the first, slanted axis label


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


def short_seconds(seconds: float) -> str:
    """A bucket bound for an axis label: 100µs, 2.5ms, 1s."""
    if seconds < 0.001:
        return f"{seconds * 1_000_000:g}µs"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def bars(dist: Distribution, label=short_seconds) -> list[Bar]:
    if not dist.bounds:
        return []
    tallest = max(dist.counts) or 1
    slot = (WIDTH - LEFT) / len(dist.bounds)
    drawn = []
    for i, (bound, count) in enumerate(zip(dist.bounds, dist.counts, strict=True)):
        height = (HEIGHT - LABEL_SPACE) * count / tallest
        drawn.append(
            Bar(
                x=LEFT + i * slot + 2,
                y=HEIGHT - LABEL_SPACE - height,
                width=slot - 4,
                height=height,
                count=int(count),
                label=("≤" + label(bound)) if not math.isinf(bound) else "more",
            )
        )
    return drawn
