"""Read a site's metrics into what the dashboard draws: this server's registry, or another's /metrics."""

from __future__ import annotations

import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from apps.metrics import prediction, prometheus
from apps.metrics.histogram import Histogram as Distribution  # one quantile for dashboard and reports

Samples = dict[str, list[tuple[str, dict, float]]]  # family name -> (sample name, labels, value)

# Counters added by later features; shown only where the server has them.
OPTIONAL_COUNTERS = {"pinned": "db_connections_pinned", "retries": "db_query_retries"}


@dataclass
class Snapshot:
    """One reading of a site's pool metrics; counters and histograms count since it started."""

    taken_at: float  # time.monotonic() of the reading
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
    # Name (from OPTIONAL_COUNTERS) -> count, for the counters this server exports.
    optional: dict[str, float] = field(default_factory=dict)
    # Each view's requests and connection-seconds (db_view_*), for the idle-hold table.
    views: dict[str, prediction.ViewTotals] = field(default_factory=dict)

    def since(self, earlier: Snapshot) -> Snapshot:
        """What happened between `earlier` and this reading; gauges stay as they are now."""
        if earlier.checkouts > self.checkouts:  # the server restarted in between
            return self
        return Snapshot(
            taken_at=self.taken_at,
            engines=self.engines,
            pools=self.pools,
            checked_out=self.checked_out,
            idle=self.idle,
            max_size=self.max_size,
            checkouts=self.checkouts - earlier.checkouts,
            timeouts=self.timeouts - earlier.timeouts,
            ended_holding=self.ended_holding - earlier.ended_holding,
            hold=self.hold.minus(earlier.hold),
            wait=self.wait.minus(earlier.wait),
            request_hold=self.request_hold.minus(earlier.request_hold),
            request_checkouts=self.request_checkouts.minus(earlier.request_checkouts),
            optional={k: v - earlier.optional.get(k, 0.0) for k, v in self.optional.items()},
            views=prediction.since(self.views, earlier.views),
        )


def from_samples(samples: Samples, taken_at: float | None = None) -> Snapshot:
    engines = sorted({labels["engine"] for s in samples.values() for _, labels, _ in s if "engine" in labels})
    pools = sorted({labels["pool"] for s in samples.values() for _, labels, _ in s if "pool" in labels})

    def total(family: str, **match: str) -> float:
        return sum(
            value
            for name, labels, value in samples.get(family, ())
            if not name.endswith("_created") and all(labels.get(k) == v for k, v in match.items())
        )

    return Snapshot(
        taken_at=time.monotonic() if taken_at is None else taken_at,
        engines=engines,
        pools=pools,
        checked_out=total("db_connections_checked_out"),
        idle=total("db_pool_connections", state="idle"),
        max_size=total("db_pool_max_connections"),
        checkouts=total("db_connection_checkouts"),
        timeouts=total("db_pool_timeouts"),
        ended_holding=total("db_requests_ended_holding"),
        hold=Distribution.from_samples(samples.get("db_connection_hold_seconds", ())),
        wait=Distribution.from_samples(samples.get("db_connection_wait_seconds", ())),
        request_hold=Distribution.from_samples(samples.get("db_request_hold_seconds", ())),
        request_checkouts=Distribution.from_samples(samples.get("db_request_checkouts", ())),
        optional={key: total(family) for key, family in OPTIONAL_COUNTERS.items() if family in samples},
        views=prediction.read_views(
            sample for family in prediction.FAMILIES.values() for sample in samples.get(family, ())
        ),
    )


def _collect(families) -> Samples:
    samples: Samples = defaultdict(list)
    for family in families:
        for sample in family.samples:
            samples[family.name].append((sample.name, sample.labels, sample.value))
    return samples


def take() -> Snapshot:
    """This server's metrics, every gunicorn worker added up."""
    return from_samples(_collect(prometheus.registry().collect()))


def fetch(base_url: str, timeout: float = 2.0) -> Snapshot:
    """Another site's metrics, read from its /metrics (which must let this server in)."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=timeout) as response:
        text = response.read().decode()
    return from_samples(_collect(text_string_to_metric_families(text)))
