"""manage.py connection_report: connections in use now and with release, per view (see prediction)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from django.core.management.base import BaseCommand, CommandError
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from apps.metrics import prediction, prometheus


def metrics_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/metrics") else f"{url}/metrics"


def read_text(url: str | None) -> str:
    """A site's /metrics; without a URL, this machine's (the workers writing to PROMETHEUS_MULTIPROC_DIR)."""
    if url is None:
        return generate_latest(prometheus.registry()).decode()
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        raise CommandError(
            f"Could not read {url}: {exc}. Is the site running, and does METRICS_ALLOWED_IPS let this "
            "machine in?"
        ) from exc


def read_views(url: str | None) -> dict[str, prediction.ViewTotals]:
    text = read_text(url)
    try:
        samples = [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]
    except ValueError as exc:
        raise CommandError(f"{url or 'the metrics'} are not in Prometheus's text format: {exc}") from exc
    return prediction.read_views(samples)


class Command(BaseCommand):
    help = (
        "Measure a running site for a while and print, per view and in total, the database connections "
        "it keeps in use now and the ones it would keep with the release engine (Little's law), and the "
        "pool that would suggest. Works on a site running a baseline (stock) engine."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--url",
            help="the site's /metrics (or its base URL); default: this machine's metrics folder "
            "(PROMETHEUS_MULTIPROC_DIR), every worker of the site added up",
        )
        parser.add_argument("--seconds", type=float, default=10.0, help="how long to measure (default: 10)")
        parser.add_argument(
            "--workers",
            type=int,
            default=1,
            help="processes sharing the load, each with a pool of its own (default: 1); the suggested "
            "pool is per process",
        )
        parser.add_argument("--json", action="store_true", help="print JSON for other tools")

    def handle(self, *args, url: str | None, seconds: float, workers: int, json: bool, **options) -> None:
        if seconds <= 0:
            raise CommandError("--seconds must be more than 0.")
        if workers < 1:
            raise CommandError("--workers must be 1 or more.")
        url = metrics_url(url) if url else None
        if not json:
            self.stdout.write(f"Measuring {url or 'this machine’s metrics'} for {seconds:g} s...")
        before = read_views(url)
        started = time.monotonic()
        time.sleep(seconds)
        after = read_views(url)
        result = prediction.predict(prediction.since(after, before), time.monotonic() - started, workers)
        if json:
            self.stdout.write(dump(result))
        else:
            self.stdout.write(table(result))


def dump(result: prediction.Prediction) -> str:
    return json.dumps(result.as_json(), indent=2)


def table(result: prediction.Prediction) -> str:
    if not result.views:
        return (
            "No request used the database while measuring: send the site some traffic (or measure "
            "longer with --seconds) and run this again."
        )
    lines = [
        f"{'view':<40} {'req/s':>8} {'held':>7} {'in DB':>7} {'release':>8} {'idle':>6}",
        f"{'':<40} {'':>8} {'(connections in use, by Little’s law)':>31}",
    ]
    for v in result.views:
        idle = "-" if v.idle_share is None else f"{v.idle_share:.0%}"
        lines.append(
            f"{v.view[:40]:<40} {v.requests_per_s:>8.1f} {v.hold_s_per_s:>7.2f} {v.db_s_per_s:>7.2f} "
            f"{v.kept_s_per_s:>8.2f} {idle:>6}"
        )
    per_process = " per process" if result.workers > 1 else ""
    lines += [
        "",
        f"Connections in use now:       {result.connections_now:.2f} (requests/s x hold per request)",
        f"With the release engine:      {result.connections_with_release:.2f} "
        "(statements, transactions, pinned and leaked checkouts)",
        f"Suggested pool{per_process}: {result.suggested_pool:>14} "
        f"(ceil(L + 2 sqrt(L)) for {result.workers} process(es))",
        "",
        "'idle' is the share of each view's hold that release gives back. Views that used no "
        "connection are not listed.",
    ]
    return "\n".join(lines)
