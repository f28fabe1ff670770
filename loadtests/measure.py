"""Read a server's /metrics and turn two scrapes into the numbers of a run."""

from __future__ import annotations

import math
import urllib.request
from collections import defaultdict
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, frozenset]


@dataclass
class Scrape:
    """One reading of /metrics: every sample, summed over the labels we do not ask about."""

    samples: dict[Key, float]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples: dict[Key, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[sample.name, frozenset(sample.labels.items())] = sample.value
        return cls(samples)

    def total(self, name: str, **labels: str) -> float:
        wanted = set(labels.items())
        return sum(v for (n, have), v in self.samples.items() if n == name and wanted <= have)

    def buckets(self, name: str) -> dict[float, float]:
        """Cumulative bucket counts of histogram `name`, summed over label sets."""
        cumulative: dict[float, float] = defaultdict(float)
        for (n, labels), value in self.samples.items():
            if n == f"{name}_bucket":
                cumulative[float(dict(labels)["le"])] += value
        return dict(cumulative)


def fetch(base_url: str, timeout: float = 10) -> Scrape:
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=timeout) as response:
        return Scrape.parse(response.read().decode())


@dataclass
class Window:
    """What happened between two scrapes."""

    before: Scrape
    after: Scrape

    def delta(self, name: str, **labels: str) -> float:
        return self.after.total(name, **labels) - self.before.total(name, **labels)

    def mean(self, histogram: str) -> float | None:
        count = self.delta(f"{histogram}_count")
        return self.delta(f"{histogram}_sum") / count if count else None

    def quantile(self, histogram: str, q: float) -> float | None:
        """Like PromQL's histogram_quantile(): linear within the bucket that holds the quantile."""
        before, after = self.before.buckets(histogram), self.after.buckets(histogram)
        bounds = sorted(after)
        counts = [after[b] - before.get(b, 0.0) for b in bounds]
        if not counts or counts[-1] <= 0:
            return None
        rank = q * counts[-1]
        lower_bound, lower_count = 0.0, 0.0
        for bound, count in zip(bounds, counts, strict=True):
            if count >= rank:
                if math.isinf(bound):
                    return lower_bound  # beyond the last finite bucket: its bound is all we know
                in_bucket = count - lower_count
                fraction = (rank - lower_count) / in_bucket if in_bucket else 1.0
                return lower_bound + (bound - lower_bound) * fraction
            lower_bound, lower_count = bound, count
        return None

    def distribution(self, histogram: str) -> list[tuple[float, float]]:
        """(upper bound, count in that bucket) for the window, for charts."""
        before, after = self.before.buckets(histogram), self.after.buckets(histogram)
        previous, out = 0.0, []
        for bound in sorted(after):
            cumulative = after[bound] - before.get(bound, 0.0)
            out.append((bound, cumulative - previous))
            previous = cumulative
        return out
