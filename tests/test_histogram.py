"""One reading of a Prometheus histogram for the dashboard and the reports (apps/metrics/histogram.py)."""

from __future__ import annotations

import math

import pytest

from apps.metrics.histogram import Histogram
from loadtests.measure import Scrape, Window

# 10 observations: 4 at or below 1 ms, 6 more at or below 10 ms, none above.
CUMULATIVE = {0.001: 4.0, 0.01: 10.0, math.inf: 10.0}


def test_quantiles_interpolate_within_the_bucket_like_promql():
    histogram = Histogram.from_cumulative(CUMULATIVE, total=10, sum=0.05)
    assert histogram.counts == [4.0, 6.0, 0.0]
    assert histogram.mean == pytest.approx(0.005)
    assert histogram.quantile(0.2) == pytest.approx(0.0005)  # half-way into the first bucket
    assert histogram.quantile(0.7) == pytest.approx(0.001 + 0.009 * 3 / 6)
    assert histogram.quantile(1.0) == pytest.approx(0.01)


def test_beyond_the_last_finite_bucket_the_quantile_is_its_bound():
    histogram = Histogram.from_cumulative({0.001: 1.0, math.inf: 10.0}, total=10, sum=5)
    assert histogram.quantile(0.95) == 0.001


def test_an_empty_histogram_has_no_mean_and_no_quantile():
    histogram = Histogram.from_cumulative({0.001: 0.0, math.inf: 0.0}, total=0, sum=0)
    assert histogram.mean is None and histogram.quantile(0.5) is None


def test_the_dashboard_and_the_reports_read_the_same_p95():
    """The dashboard reads the registry's samples, the report two /metrics scrapes: one answer."""
    from apps.dashboard.snapshot import Distribution

    text_before = (
        "# TYPE h histogram\n"
        + "".join(f'h_bucket{{le="{le}"}} 0\n' for le in ("0.001", "0.01", "+Inf"))
        + "h_count 0\nh_sum 0\n"
    )
    text_after = (
        '# TYPE h histogram\nh_bucket{le="0.001"} 4\nh_bucket{le="0.01"} 10\nh_bucket{le="+Inf"} 10\n'
        "h_count 10\nh_sum 0.05\n"
    )
    window = Window(Scrape.parse(text_before), Scrape.parse(text_after))
    samples = [("h_bucket", {"le": str(le)}, v) for le, v in CUMULATIVE.items()]
    samples += [("h_count", {}, 10.0), ("h_sum", {}, 0.05)]
    assert Distribution is Histogram
    assert window.quantile("h", 0.95) == pytest.approx(Histogram.from_samples(samples).quantile(0.95))
    assert window.mean("h") == pytest.approx(0.005)
