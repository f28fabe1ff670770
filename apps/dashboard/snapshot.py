"""Read the Prometheus registry into what the dashboard draws."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from apps.metrics import prometheus


@dataclass
class Distribution:
    """A Prometheus histogram, summed over label sets: per-bucket counts, not cumulative."""

    bounds: list[float] = field(default_factory=list)
    counts: list[float] = field(default_factory=list)
    total: float = 0.0
    sum: float = 0.0

    @property
    def mean(self) -> float | None:
        return self.sum / self.total if self.total else None

    def quantile(self, q: float) -> float | None:
        """Upper bound of the bucket that holds the q-quantile (what the histogram can tell)."""
        if not self.total:
            return None
        seen = 0.0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            seen += count
            if seen >= q * self.total:
                return bound
        return math.inf


@dataclass
class Snapshot:
    engines: list[str]
    pools: list[str]
    checked_out: float
    idle: float
    max_size: float
    checkouts: float
    timeouts: float
    ended_holding: float
    hold: Distribution
    wait: Distribution
    request_hold: Distribution
    request_checkouts: Distribution


def _distribution(samples: list) -> Distribution:
    cumulative: dict[float, float] = defaultdict(float)
    dist = Distribution()
    for name, labels, value in samples:
        if name.endswith("_bucket"):
            cumulative[float(labels["le"])] += value
        elif name.endswith("_count"):
            dist.total += value
        elif name.endswith("_sum"):
            dist.sum += value
    previous = 0.0
    for bound in sorted(cumulative):
        dist.bounds.append(bound)
        dist.counts.append(cumulative[bound] - previous)
        previous = cumulative[bound]
    return dist


def take() -> Snapshot:
    samples: dict[str, list] = defaultdict(list)
    engines, pools = set(), set()
    for family in prometheus.registry().collect():
        for sample in family.samples:
            samples[family.name].append((sample.name, sample.labels, sample.value))
            if "engine" in sample.labels:
                engines.add(sample.labels["engine"])
                pools.add(sample.labels["pool"])

    def total(family: str, **match) -> float:
        return sum(
            value
            for name, labels, value in samples[family]
            if not name.endswith("_created") and all(labels.get(k) == v for k, v in match.items())
        )

    return Snapshot(
        engines=sorted(engines),
        pools=sorted(pools),
        checked_out=total("db_connections_checked_out"),
        idle=total("db_pool_connections", state="idle"),
        max_size=total("db_pool_max_connections"),
        checkouts=total("db_connection_checkouts"),
        timeouts=total("db_pool_timeouts"),
        ended_holding=total("db_requests_ended_holding"),
        hold=_distribution(samples["db_connection_hold_seconds"]),
        wait=_distribution(samples["db_connection_wait_seconds"]),
        request_hold=_distribution(samples["db_request_hold_seconds"]),
        request_checkouts=_distribution(samples["db_request_checkouts"]),
    )
