"""One side of a comparison: a site under Locust for a bounded time, measured by its own /metrics."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from apps.metrics import prediction
from loadtests import measure
from loadtests.sampler import Sampler, Server
from loadtests.scenarios import SCENARIOS, SINGLE_REQUEST_PATHS
from loadtests.site import BASE_DIR, StartError, cpu_used

# The sides a scenario can run, in the order they run, and what each is called in a report.
TITLES = {
    "baseline": "stock",
    "release": "release",
    "ceiling": "ceiling (stock, every connection it can use)",
    "pgbouncer": "stock + PgBouncer",
}


@dataclass(frozen=True)
class Side:
    """What serves one side: which engine, how large an app pool (per worker)."""

    name: str  # a key of TITLES
    release: str  # DB_RELEASE: "request" (stock Django) or "cursor"
    pool_size: int
    server_connections: int | None = None  # PgBouncer's pool, for the pgbouncer side


class Remote:
    """A site this run did not start (--target): only its HTTP answers and /metrics can be read."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def worker_cpu_seconds(self) -> None:
        return None  # not our process


@dataclass(frozen=True)
class Load:
    """The load every side gets."""

    scenario: str
    users: int
    duration: int
    external_latency_ms: int
    customers: str  # customer ids that may place orders, "first-last"
    out: Path


@dataclass(frozen=True)
class Unloaded:
    """The scenario's request timed one at a time on the idle server."""

    latency_ms: float | None = None  # median
    hold_mean_ms: float | None = None  # per checkout, with no other request in the worker


def measure_unloaded(url: str, scenario: str, pool_size: int, requests: int = 15) -> Unloaded:
    """Time the scenario's request alone, before the load.

    The thread bound is the most a worker's threads can serve if every request
    took that long: threads ÷ this time. The hold per checkout is what a
    checkout of this request costs with no other thread wanting the worker's
    CPU. Nothing for scenarios that mix requests.
    """
    path = SINGLE_REQUEST_PATHS.get(scenario)
    if path is None:
        return Unloaded()
    with urllib.request.urlopen(f"{url}/api/orm/products/?page_size=1", timeout=10) as response:
        product = json.load(response)["results"][0]["id"]
    request_url = url + path.format(product=product)
    # Warm up, and use every pooled connection once: a connection's first
    # checkout is pinged, which is not what the timed requests should show.
    for _ in range(min(pool_size, 64) + 2):
        timed_get(request_url)
    before = measure.fetch(url)
    times = [timed_get(request_url) for _ in range(requests)]
    hold = measure.Window(before, measure.fetch(url)).mean("db_connection_hold_seconds")
    return Unloaded(latency_ms=statistics.median(times) * 1000, hold_mean_ms=ms(hold))


def timed_get(url: str) -> float:
    """Seconds to GET `url` and read the answer."""
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as response:
        response.read()
    return time.perf_counter() - started


def run_locust(url: str, load: Load, name: str) -> dict:
    """Locust headless against `url`; its aggregated row. Its own reports go to locust/`name`*."""
    prefix = load.out / "locust" / name
    prefix.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "locust",
        "-f", str(BASE_DIR / "loadtests" / "locustfile.py"), SCENARIOS[load.scenario],
        "--headless", "--only-summary",
        "-u", str(load.users), "-r", str(load.users), "-t", f"{load.duration}s",
        "--stop-timeout", "5",
        "--host", url,
        "--csv", str(prefix), "--html", f"{prefix}.html",
        "--loglevel", "WARNING",
    ]  # fmt: skip
    env = {**os.environ, "SHOP_CUSTOMER_IDS": load.customers}
    result = subprocess.run(
        command, cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=load.duration + 120
    )
    if result.returncode not in (0, 1):  # 1: the run had failures, which we report
        raise StartError(f"locust failed ({result.returncode}):\n{result.stderr[-2000:]}")
    with open(f"{prefix}_stats.csv", newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    aggregated = rows["Aggregated"]
    if int(aggregated["Request Count"]) == 0:
        # Locust writes "N/A" for the percentiles of no requests: nothing to report.
        raise StartError(
            f"locust sent no request to {url} in {load.duration} s (see {prefix}.html):\n"
            f"{result.stderr[-2000:]}"
        )
    return aggregated


def measure_side(
    server: Server, load: Load, label: str, files: str, *, pool_size: int, workers: int, threads: int | None
) -> dict:
    """Load `server` for the scenario's duration and return the side's figures.

    `threads`: each worker's, under WSGI; None under ASGI, where no thread count bounds the server.
    """
    unloaded = measure_unloaded(server.url, load.scenario, pool_size)
    before = measure.fetch(server.url)
    cpu_before = server.worker_cpu_seconds()
    sampler = Sampler(server, label, load.duration, pool_size * workers, workers)
    sampler.start()
    started = time.monotonic()
    try:
        locust = run_locust(server.url, load, files)
    finally:
        # Requests still in flight when Locust stopped finish here; the
        # server's counters see them, Locust does not.
        time.sleep(load.external_latency_ms / 1000 + 1.0)
        sampler.stopping.set()
        sampler.join()
    after = measure.fetch(server.url)
    cpu = cpu_used(cpu_before, server.worker_cpu_seconds())
    elapsed = time.monotonic() - started
    window = measure.Window(before, after)
    served = window.delta("db_request_checkouts_count")
    return {
        "rps": served / load.duration,
        "requests": served,
        "failures": int(locust["Failure Count"]),
        "locust_requests": int(locust["Request Count"]),
        "locust_rps": float(locust["Requests/s"]),
        "latency_p50_ms": float(locust["50%"]),
        "latency_p95_ms": float(locust["95%"]),
        "latency_p99_ms": float(locust["99%"]),
        **connection_figures(window),
        **predicted_connections(window.prediction(load.duration, workers)),
        "max_checked_out": int(sampler.max_checked_out),
        "worker_cpu_ms_per_request": ms(ratio(cpu, served)),
        "worker_busy_percent": sampler.median_busy_percent(),
        "wall_seconds": round(elapsed, 1),
        "unloaded_latency_ms": unloaded.latency_ms,
        "unloaded_hold_mean_ms": unloaded.hold_mean_ms,
        "thread_bound_rps": ratio(workers * threads * 1000, unloaded.latency_ms) if threads else None,
        "pool_size": pool_size,
        "locust_report": f"locust/{files}.html",
    }


def server_of_site(url: str) -> str | None:
    """ "asgi" or "wsgi", from the Server header a running site answers with, if it names one."""
    with urllib.request.urlopen(f"{url}/healthz", timeout=10) as response:
        software = response.headers.get("Server", "").lower()
    return "asgi" if "uvicorn" in software else "wsgi" if "gunicorn" in software else None


def connection_figures(window: measure.Window) -> dict:
    """What the engines' metrics say of the checkouts and requests (or tasks) between two readings."""
    return {
        "hold_mean_ms": ms(window.mean("db_connection_hold_seconds")),
        "hold_p95_ms": ms(window.quantile("db_connection_hold_seconds", 0.95)),
        "wait_mean_ms": ms(window.mean("db_connection_wait_seconds")),
        "wait_p95_ms": ms(window.quantile("db_connection_wait_seconds", 0.95)),
        "checkouts_per_request": ratio(
            window.delta("db_request_checkouts_sum"), window.delta("db_request_checkouts_count")
        ),
        "request_hold_mean_ms": ms(window.mean("db_request_hold_seconds")),
        "pool_timeouts": int(window.delta("db_pool_timeouts_total")),
        "requests_ended_holding": int(window.delta("db_requests_ended_holding_total")),
        "hold_distribution": window.distribution("db_connection_hold_seconds"),
    }


def predicted_connections(predicted: prediction.Prediction) -> dict:
    """connection_report's totals: connections in use, now and with release, and a pool per worker."""
    return {
        "predicted_connections_now": predicted.connections_now,
        "predicted_connections_with_release": predicted.connections_with_release,
        "predicted_pool": predicted.suggested_pool if predicted.views else None,
    }


def pool_size_of(url: str) -> int | None:
    """The app pool a running site reports (db_pool_max_connections, all workers), if it does."""
    size = measure.fetch(url).total("db_pool_max_connections")
    return int(size) if size else None


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None
