"""Read a server's /metrics and turn two scrapes into the numbers of a run."""

from __future__ import annotations

import urllib.request
from collections import defaultdict
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from apps.metrics import prediction
from apps.metrics.histogram import Histogram

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

    def histogram(self, name: str) -> Histogram:
        """Histogram `name` since the server started, summed over label sets."""
        return Histogram.from_cumulative(
            self.buckets(name), self.total(f"{name}_count"), self.total(f"{name}_sum")
        )

    def views(self) -> dict[str, prediction.ViewTotals]:
        """The per-view counters (db_view_*), by view."""
        samples = ((name, dict(labels), value) for (name, labels), value in self.samples.items())
        return prediction.read_views(samples)


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

    def histogram(self, name: str) -> Histogram:
        """Histogram `name` as observed between the two scrapes."""
        return self.after.histogram(name).minus(self.before.histogram(name))

    def quantile(self, histogram: str, q: float) -> float | None:
        return self.histogram(histogram).quantile(q)

    def distribution(self, histogram: str) -> list[tuple[float, float]]:
        """(upper bound, count in that bucket) for the window, for charts."""
        return self.histogram(histogram).pairs()

    def prediction(self, seconds: float, workers: int) -> prediction.Prediction:
        """What manage.py connection_report says of the window, `seconds` long."""
        return prediction.predict(prediction.since(self.after.views(), self.before.views()), seconds, workers)


def read_directory(path) -> Scrape:
    """What the processes writing to a PROMETHEUS_MULTIPROC_DIR hold now, for one that serves no /metrics.

    A task worker (loadtests/tasks.py) counts as the sites do, into its folder; read it from here.
    """
    from prometheus_client import CollectorRegistry, generate_latest

    from apps.metrics.prometheus import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(path))
    return Scrape.parse(generate_latest(registry).decode())
