"""Read Prometheus text the way a scraper does."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def sample_total(text: str, sample_name: str, **labels: str) -> float:
    """Sum of the samples called `sample_name` whose labels include `labels`."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items())
    )
