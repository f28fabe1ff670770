"""Compare stock Django (baseline) with early release, side by side, under the same load.

    python -m loadtests.compare [--scenarios raw,orm] [--duration 30] [--users 64] ...

With nothing running and no Docker: starts the embedded PostgreSQL (or uses
DATABASE_URL), migrates and seeds, then for each scenario serves the shop under
gunicorn twice, one at a time, with the same configuration but DB_RELEASE
(request = baseline, cursor = release), runs Locust headless against it for a
bounded time, reads the server's own /metrics before and after, and stops
everything it started. Writes report.json, report.md and report.html (with PNG
charts) to --out (default reports/<timestamp>/) and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from loadtests import measure, report, rounds
from loadtests.scenarios import SCENARIOS, SINGLE_REQUEST_PATHS
from loadtests.site import BASE_DIR, Site, SiteConfig, StartError, cpu_used, ensure_port_free

SIDES = {"baseline": "request", "release": "cursor"}


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.compare", description=__doc__.split("\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated: %(default)s")
    parser.add_argument("--duration", type=int, default=30, help="seconds of load per side (default 30)")
    parser.add_argument("--users", type=int, default=64, help="concurrent Locust users (default 64)")
    parser.add_argument("--pool-size", type=int, default=4, help="connections per worker (default 4)")
    parser.add_argument("--threads", type=int, default=32, help="gunicorn threads per worker (default 32)")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers (default 1)")
    parser.add_argument("--external-latency-ms", type=int, default=50, help="simulated call (default 50)")
    parser.add_argument("--pool", choices=["native", "dj_db_conn_pool"], default="native")
    parser.add_argument("--port", type=int, default=8100, help="where the site listens (default 8100)")
    parser.add_argument("--seed", default="small", help="seed size, or 'none' (default small)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs of each side per scenario, the first side alternating; "
                        "the report gives medians (default 1)")  # fmt: skip
    parser.add_argument("--overhead-rounds", type=int, default=20, help="0 skips the per-query benchmark")
    parser.add_argument("--out", type=Path, help="report folder (default reports/<timestamp>/)")
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    for name in ("duration", "users", "pool_size", "threads", "workers", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.external_latency_ms < 0:
        parser.error("--external-latency-ms cannot be negative")
    if args.out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        args.out = BASE_DIR / "reports" / stamp
    return args


def prepare_database(seed: str) -> str:
    """Database up, migrated and seeded; returns the customer id range for orders."""
    from devtools.serve import configure_environment, prepare

    configure_environment()
    prepare(None if seed == "none" else seed)
    from apps.customers.models import Customer

    ids = Customer.objects.order_by("pk").values_list("pk", flat=True)
    if not ids:
        raise StartError("the database has no customers to place orders: seed it (--seed small)")
    customers = f"{ids.first()}-{ids.last()}"
    connections.close_all()
    return customers


def reset_shop() -> None:
    """The same data for every run: orders placed by earlier runs go, stock is topped up.

    Without this, each run would export and report over more orders than the one
    before, and the second side of a comparison would work harder than the first.
    """
    from apps.catalog.models import Product
    from apps.orders.models import Order

    Order.objects.exclude(number__startswith="S-").delete()  # seeded orders are S-00000000...
    Product.objects.update(stock=1_000_000)
    connections.close_all()


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import django

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=BASE_DIR, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "django": django.get_version(),
        "gunicorn": importlib.metadata.version("gunicorn"),
        "system": f"{platform.system()} {platform.release()}",
        "commit": commit or None,
    }


class Sampler(threading.Thread):
    """Reads /metrics every half second: the most connections out at once, and progress.

    Every five seconds it also notes how busy the workers were, in percent of
    one core each (the mean over the workers): Python runs one thread of a
    process at a time, so a worker near 100% is bound by its CPU, whatever its
    threads and its pool allow.
    """

    def __init__(self, site: Site, label: str, duration: int, config: SiteConfig) -> None:
        super().__init__(daemon=True)
        self.site, self.label, self.duration = site, label, duration
        self.pool_size = config.pool_size * config.workers
        self.workers = config.workers
        self.max_checked_out = 0.0
        self.busy_percents: list[float] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        last = None  # (clock, requests, worker CPU) at the last progress line
        while not self.stopping.wait(0.5):
            try:
                scrape = measure.fetch(self.site.url, timeout=5)
            except OSError:
                continue
            now = time.monotonic()
            checked_out = scrape.total("db_connections_checked_out")
            self.max_checked_out = max(self.max_checked_out, checked_out)
            count = scrape.total("db_request_checkouts_count")
            if last is None:
                last = (now, count, self.site.worker_cpu_seconds())
                continue
            then, count_then, cpu_then = last
            if now - then < 5:
                continue
            cpu = self.site.worker_cpu_seconds()  # only when a reading is due
            busy = self.busy_percent(cpu_used(cpu_then, cpu), now - then)
            if busy is not None:
                self.busy_percents.append(busy)
            say(
                f"  {self.label}: {min(self.duration, int(now - started))}/{self.duration} s, "
                f"{(count - count_then) / (now - then):.0f} req/s, "
                f"{checked_out:.0f}/{self.pool_size} connections checked out"
                + (f", worker CPU {busy:.0f}%" if busy is not None else "")
            )
            last = (now, count, cpu)

    def busy_percent(self, cpu_seconds: float | None, seconds: float) -> float | None:
        """Percent of one core per worker that `cpu_seconds` of CPU in `seconds` of time make."""
        return None if cpu_seconds is None else 100 * cpu_seconds / (seconds * self.workers)

    def median_busy_percent(self) -> float | None:
        return statistics.median(self.busy_percents) if self.busy_percents else None


@dataclass(frozen=True)
class Unloaded:
    """The scenario's request timed one at a time on the idle server."""

    latency_ms: float | None = None  # median
    hold_mean_ms: float | None = None  # per checkout, with no other request in the worker


def measure_unloaded(site: Site, scenario: str, requests: int = 15) -> Unloaded:
    """Time the scenario's request alone, before the load.

    The thread bound is the most a worker's threads can serve if every request
    took that long: threads ÷ this time. The hold per checkout is what a
    checkout of this request costs with no other thread wanting the worker's
    CPU. Nothing for scenarios that mix requests.
    """
    path = SINGLE_REQUEST_PATHS.get(scenario)
    if path is None:
        return Unloaded()
    with urllib.request.urlopen(f"{site.url}/api/orm/products/?page_size=1", timeout=10) as response:
        product = json.load(response)["results"][0]["id"]
    url = site.url + path.format(product=product)
    # Warm up, and use every pooled connection once: a connection's first
    # checkout is pinged, which is not what the timed requests should show.
    for _ in range(site.config.pool_size + 2):
        timed_get(url)
    before = measure.fetch(site.url)
    times = [timed_get(url) for _ in range(requests)]
    hold = measure.Window(before, measure.fetch(site.url)).mean("db_connection_hold_seconds")
    return Unloaded(latency_ms=statistics.median(times) * 1000, hold_mean_ms=ms(hold))


def timed_get(url: str) -> float:
    """Seconds to GET `url` and read the answer."""
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as response:
        response.read()
    return time.perf_counter() - started


def run_locust(site: Site, scenario: str, name: str, args, out: Path, customers: str) -> dict:
    prefix = out / "locust" / name
    prefix.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "locust",
        "-f", str(BASE_DIR / "loadtests" / "locustfile.py"), SCENARIOS[scenario],
        "--headless", "--only-summary",
        "-u", str(args.users), "-r", str(args.users), "-t", f"{args.duration}s",
        "--stop-timeout", "5",
        "--host", site.url,
        "--csv", str(prefix), "--html", f"{prefix}.html",
        "--loglevel", "WARNING",
    ]  # fmt: skip
    env = {**os.environ, "SHOP_CUSTOMER_IDS": customers}
    result = subprocess.run(
        command, cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=args.duration + 120
    )
    if result.returncode not in (0, 1):  # 1: the run had failures, which we report
        raise StartError(f"locust failed ({result.returncode}):\n{result.stderr[-2000:]}")
    with open(f"{prefix}_stats.csv", newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    return rows["Aggregated"]


def side_order(scenario_index: int) -> list[str]:
    """Baseline first in the first scenario, release first in the next, and so on.

    The two sides of a scenario run one after the other; on a machine that
    speeds up or slows down during a run, the side that runs second is helped
    or hurt. Alternating keeps that from always falling on the same side.
    """
    sides = list(SIDES)
    return sides if scenario_index % 2 == 0 else sides[::-1]


def one_side(scenario: str, side: str, args, customers: str, round_number: int = 1) -> dict:
    config = SiteConfig(
        release=SIDES[side],
        pool=args.pool,
        pool_size=args.pool_size,
        workers=args.workers,
        threads=args.threads,
        external_latency_ms=args.external_latency_ms,
    )
    label, files = f"{scenario}/{side}", f"{scenario}-{config.release}"
    if args.rounds > 1:
        label += f" (round {round_number}/{args.rounds})"
        files += f"-round{round_number}"
    reset_shop()
    say(f"{label}: starting gunicorn ({args.workers}x{args.threads} threads, pool {args.pool_size})")
    with Site(config, args.port, args.out) as site:
        unloaded = measure_unloaded(site, scenario)
        before = measure.fetch(site.url)
        cpu_before = site.worker_cpu_seconds()
        sampler = Sampler(site, label, args.duration, config)
        sampler.start()
        say(f"{label}: {args.users} users for {args.duration} s")
        started = time.monotonic()
        try:
            locust = run_locust(site, scenario, files, args, args.out, customers)
        finally:
            # Requests still in flight when Locust stopped finish here; the
            # server's counters see them, Locust does not.
            time.sleep(args.external_latency_ms / 1000 + 1.0)
            sampler.stopping.set()
            sampler.join()
        after = measure.fetch(site.url)
        cpu_after = site.worker_cpu_seconds()
        elapsed = time.monotonic() - started
    window = measure.Window(before, after)
    served = window.delta("db_request_checkouts_count")
    cpu = cpu_used(cpu_before, cpu_after)
    return {
        "rps": served / args.duration,
        "requests": served,
        "failures": int(locust["Failure Count"]),
        "locust_requests": int(locust["Request Count"]),
        "locust_rps": float(locust["Requests/s"]),
        "latency_p50_ms": float(locust["50%"]),
        "latency_p95_ms": float(locust["95%"]),
        "latency_p99_ms": float(locust["99%"]),
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
        "max_checked_out": int(sampler.max_checked_out),
        "hold_distribution": window.distribution("db_connection_hold_seconds"),
        "worker_cpu_ms_per_request": ms(ratio(cpu, served)),
        "worker_busy_percent": sampler.median_busy_percent(),
        "wall_seconds": round(elapsed, 1),
        "unloaded_latency_ms": unloaded.latency_ms,
        "unloaded_hold_mean_ms": unloaded.hold_mean_ms,
        "thread_bound_rps": ratio(args.workers * args.threads * 1000, unloaded.latency_ms),
    }


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def embedded_server_running() -> bool:
    if os.environ.get("DATABASE_URL"):
        return False
    from devtools.localdb import LocalDatabase

    return LocalDatabase().running_server() is not None


def stop_embedded_server() -> None:
    from devtools.localdb import LocalDatabase

    if LocalDatabase().stop():
        say("stopped the embedded PostgreSQL this run started")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    # Leave the machine as we found it: stop the embedded server if this run starts it.
    started_database = not os.environ.get("DATABASE_URL") and not embedded_server_running()
    try:
        ensure_port_free(args.port)  # before starting anything
        say(f"preparing the database (seed: {args.seed})")
        customers = prepare_database(args.seed)
        config = {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            # No server with these threads answers requests that wait this long any faster.
            "latency_ceiling_rps": args.workers * args.threads * 1000 / max(args.external_latency_ms, 1),
            "machine": machine(),
        }
        results: dict = {"config": config, "scenarios": {}}
        for index, scenario in enumerate(args.scenarios):
            runs: dict[str, list[dict]] = {side: [] for side in SIDES}
            for round_number in range(1, args.rounds + 1):
                # ABBA...: the side that goes first alternates from round to round too.
                for position, side in enumerate(side_order(index + round_number - 1), start=1):
                    run = one_side(scenario, side, args, customers, round_number)
                    runs[side].append({**run, "ran": position})
            results["scenarios"][scenario] = {side: rounds.combine(runs[side]) for side in SIDES}
            report.write(results, args.out)  # keep what is done if a later run fails
        if args.overhead_rounds:
            say(f"per-query overhead, one thread ({args.overhead_rounds} rounds per engine)")
            from loadtests import overhead

            measured = overhead.measure([args.pool], queries=100, rounds=args.overhead_rounds)
            results["overhead"] = overhead.as_json(measured)
    except (StartError, ImproperlyConfigured) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: everything this run started has been stopped", file=sys.stderr)
        return 130
    finally:
        if settings.configured:
            connections.close_all()
        if started_database:
            stop_embedded_server()
    report.write(results, args.out)
    print()
    print(report.markdown(results))
    say(f"report written to {args.out}/ (report.md, report.html, report.json, *.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
