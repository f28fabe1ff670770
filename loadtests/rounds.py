"""Fold several runs of one side of a scenario into one set of figures.

On a machine whose speed drifts, one run per side can land on a fast spell for
one side and a slow one for the other. ``--rounds N`` runs each side N times,
alternating which side goes first, and the report gives each figure's median.
Counts of things that should never happen (failures, pool timeouts, leaks) are
added up instead: one bad run must not hide behind the median.
"""

from __future__ import annotations

import statistics

ADDED_UP = (
    "failures", "pool_timeouts", "requests_ended_holding", "requests", "locust_requests", "wall_seconds",
)  # fmt: skip
HIGHEST = ("max_checked_out",)


def combine(runs: list[dict]) -> dict:
    """One side's figures over `runs` (each what compare.one_side returned)."""
    if len(runs) == 1:
        return runs[0]
    combined: dict = {}
    for key in runs[0]:
        values = [run[key] for run in runs if run.get(key) is not None]
        if key == "hold_distribution":
            combined[key] = added_buckets(values)
        elif not values:
            combined[key] = None
        elif key in ADDED_UP:
            combined[key] = sum(values)
        elif key in HIGHEST:
            combined[key] = max(values)
        elif key == "ran":
            combined[key] = None  # each side ran first in some rounds
        elif isinstance(values[0], str):
            combined[key] = values[0]  # a file of the first round; each round's is in "rounds"
        else:
            combined[key] = statistics.median(values)
    combined["rounds"] = [{k: v for k, v in run.items() if k != "hold_distribution"} for run in runs]
    return combined


def added_buckets(distributions: list[list]) -> list[list]:
    """Histogram buckets [(upper bound, count), ...] of several runs, added bucket by bucket."""
    totals: dict[float, float] = {}
    for distribution in distributions:
        for bound, count in distribution:
            totals[bound] = totals.get(bound, 0.0) + count
    return [[bound, totals[bound]] for bound in sorted(totals)]
