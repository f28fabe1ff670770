"""Would release help this site, and how much? Connections in use now and with release, per view.

By Little's law, the connections a view keeps in use on average are its
requests per second times the seconds each request holds one: the rate of its
``db_view_hold_seconds_total`` counter. Under release a request keeps a
connection only while it must (``db_view_kept_seconds_total``: its statements,
transactions, hold_connection() blocks, pinned and leaked checkouts), so the
rate of that counter is what it would keep in use. Every engine counts both,
the baseline included: measure a stock site, then decide.

A pool must hold more than the average, as requests do not arrive evenly; the
suggestion adds the usual square-root margin: ceil(L + 2 * sqrt(L)) for an
average of L, per process (each gunicorn worker has a pool of its own).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields

# Counter families (sample names without "_total") of apps.metrics.prometheus, by ViewTotals field.
FAMILIES = {
    "requests": "db_view_requests",
    "hold": "db_view_hold_seconds",
    "database": "db_view_database_seconds",
    "kept": "db_view_kept_seconds",
}
HEADROOM_SIGMAS = 2.0

Sample = tuple[str, Mapping[str, str], float]  # sample name, labels, value


@dataclass(frozen=True)
class ViewTotals:
    """A view's counters: requests, and connection-seconds held, in the database and kept by release."""

    requests: float = 0.0
    hold: float = 0.0
    database: float = 0.0
    kept: float = 0.0

    def plus(self, other: ViewTotals) -> ViewTotals:
        return ViewTotals(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def minus(self, earlier: ViewTotals) -> ViewTotals:
        return ViewTotals(*(getattr(self, f.name) - getattr(earlier, f.name) for f in fields(self)))


def read_views(samples: Iterable[Sample]) -> dict[str, ViewTotals]:
    """Each view's counters, summed over databases, engines and pools."""
    by_sample = {f"{family}_total": name for name, family in FAMILIES.items()}
    views: dict[str, dict[str, float]] = {}
    for sample_name, labels, value in samples:
        name = by_sample.get(sample_name)
        if name is not None:
            totals = views.setdefault(labels.get("view", ""), dict.fromkeys(FAMILIES, 0.0))
            totals[name] += value
    return {view: ViewTotals(**totals) for view, totals in views.items()}


def since(now: dict[str, ViewTotals], earlier: dict[str, ViewTotals]) -> dict[str, ViewTotals]:
    """What each view did between two readings (a view absent before started at zero)."""
    if any(now.get(view, ViewTotals()).requests < totals.requests for view, totals in earlier.items()):
        return now  # the site restarted in between: its counters began again
    return {view: totals.minus(earlier.get(view, ViewTotals())) for view, totals in now.items()}


def suggested_pool(connections: float) -> int:
    """A pool for an average of `connections` in use, with room for requests arriving together."""
    return max(1, math.ceil(connections + HEADROOM_SIGMAS * math.sqrt(connections) - 1e-9))


@dataclass(frozen=True)
class ViewRates:
    view: str
    requests_per_s: float
    hold_s_per_s: float  # connections this view keeps in use now
    db_s_per_s: float  # of which running statements
    kept_s_per_s: float  # connections it would keep in use with release

    @property
    def idle_s_per_s(self) -> float:
        """Connections held doing nothing that release gives back."""
        return max(self.hold_s_per_s - self.kept_s_per_s, 0.0)

    @property
    def idle_share(self) -> float | None:
        return self.idle_s_per_s / self.hold_s_per_s if self.hold_s_per_s else None


@dataclass(frozen=True)
class Prediction:
    seconds: float
    workers: int
    views: list[ViewRates] = field(default_factory=list)

    @property
    def connections_now(self) -> float:
        return sum(v.hold_s_per_s for v in self.views)

    @property
    def connections_with_release(self) -> float:
        return sum(v.kept_s_per_s for v in self.views)

    @property
    def suggested_pool(self) -> int:
        """Per process: the site's connections with release shared by its workers."""
        return suggested_pool(self.connections_with_release / self.workers)

    def as_json(self) -> dict:
        return {
            "total": {
                "connections_now": round(self.connections_now, 4),
                "connections_with_release": round(self.connections_with_release, 4),
                "suggested_pool": self.suggested_pool,
                "workers": self.workers,
                "seconds": round(self.seconds, 3),
            },
            "views": [
                {
                    "view": v.view,
                    "requests_per_s": round(v.requests_per_s, 3),
                    "hold_s_per_s": round(v.hold_s_per_s, 4),
                    "db_s_per_s": round(v.db_s_per_s, 4),
                    "kept_s_per_s": round(v.kept_s_per_s, 4),
                    "idle_share": None if v.idle_share is None else round(v.idle_share, 4),
                }
                for v in self.views
            ],
        }


def predict(window: dict[str, ViewTotals], seconds: float, workers: int = 1) -> Prediction:
    """Rates over a window of `seconds` (what since() gives), most idle connection-seconds first."""
    if seconds <= 0:
        raise ValueError("the window must last some time")
    rates = [
        ViewRates(
            view=view,
            requests_per_s=totals.requests / seconds,
            hold_s_per_s=totals.hold / seconds,
            db_s_per_s=totals.database / seconds,
            kept_s_per_s=totals.kept / seconds,
        )
        for view, totals in window.items()
        if totals.requests
    ]
    rates.sort(key=lambda v: (-v.idle_s_per_s, v.view))
    return Prediction(seconds=seconds, workers=max(workers, 1), views=rates)
