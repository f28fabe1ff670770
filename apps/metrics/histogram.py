"""A Prometheus histogram read back from its samples: bucket counts, mean and quantiles.

One reader for everything that draws or reports a histogram (the /pool/
dashboard, the comparison reports), so that a "p95" means the same thing
everywhere: PromQL's histogram_quantile(), linear within the bucket that holds
the quantile.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass
class Histogram:
    """Per-bucket counts (not cumulative), in order of their upper bounds, with the total and sum."""

    bounds: list[float] = field(default_factory=list)
    counts: list[float] = field(default_factory=list)
    total: float = 0.0
    sum: float = 0.0

    @classmethod
    def from_cumulative(cls, cumulative: Mapping[float, float], total: float, sum: float) -> Histogram:
        """From Prometheus' cumulative `le` buckets {upper bound: observations at or below it}."""
        histogram = cls(total=total, sum=sum)
        previous = 0.0
        for bound in sorted(cumulative):
            histogram.bounds.append(bound)
            histogram.counts.append(cumulative[bound] - previous)
            previous = cumulative[bound]
        return histogram

    @classmethod
    def from_samples(cls, samples: Iterable[tuple[str, Mapping[str, str], float]]) -> Histogram:
        """From one histogram's (name, labels, value) samples, added up over every label set."""
        cumulative: dict[float, float] = defaultdict(float)
        total = sum_ = 0.0
        for name, labels, value in samples:
            if name.endswith("_bucket"):
                cumulative[float(labels["le"])] += value
            elif name.endswith("_count"):
                total += value
            elif name.endswith("_sum"):
                sum_ += value
        return cls.from_cumulative(cumulative, total, sum_)

    def minus(self, earlier: Histogram) -> Histogram:
        """What was observed since `earlier` (a reading of the same histogram)."""
        before = dict(zip(earlier.bounds, earlier.counts, strict=True))
        return Histogram(
            bounds=list(self.bounds),
            counts=[
                count - before.get(bound, 0.0) for bound, count in zip(self.bounds, self.counts, strict=True)
            ],
            total=self.total - earlier.total,
            sum=self.sum - earlier.sum,
        )

    @property
    def mean(self) -> float | None:
        return self.sum / self.total if self.total else None

    def quantile(self, q: float) -> float | None:
        """Like PromQL's histogram_quantile(): linear within the bucket that holds the quantile.

        Beyond the last finite bucket, that bucket's bound is all a histogram
        can tell, so that is the answer (as in PromQL). None when empty.
        """
        observed = sum(self.counts)
        if observed <= 0:
            return None
        rank = q * observed
        lower_bound, seen = 0.0, 0.0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            if seen + count >= rank and count > 0:
                if math.isinf(bound):
                    return lower_bound
                return lower_bound + (bound - lower_bound) * (rank - seen) / count
            seen += count
            lower_bound = bound
        return lower_bound

    def pairs(self) -> list[tuple[float, float]]:
        """[(upper bound, count in that bucket), ...], for charts and JSON."""
        return list(zip(self.bounds, self.counts, strict=True))
