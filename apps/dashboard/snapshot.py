"""Read the Prometheus registry into what the dashboard draws."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from apps.metrics import prometheus
from apps.metrics.histogram import Histogram as Distribution  # one quantile for dashboard and reports


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
    return Distribution.from_samples(samples)


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
