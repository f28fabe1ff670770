"""What early release costs per query: release against stock Django on the same pool, one thread.

    python -m loadtests.overhead [--queries 200] [--rounds 40] [--pools native,dj_db_conn_pool]

A "request" runs N small ORM queries and then ends (Django's end-of-request
close). The stock engine borrows one connection for the N queries; the release
engine borrows and returns one per query. The difference per query is the price
of a checkout: the pool's bookkeeping, Django's connect/close, the health check
and the metrics. Engines run interleaved, round after round, and each overhead is
the median of the per-round differences, so a busy machine slows both sides alike.

A third variant pings the connection on every checkout (what CONN_HEALTH_CHECKS
and QueuePool's pre_ping do out of the box) to show what the idle-window check
saves. Two more run the engines alone, without the sample site's Prometheus
metrics (which observe every checkout): that is what the backend costs a
project that copies it without them. The last adds to each stock query a bare
checkout and return on a plain pool of the same library, without Django: the
floor under any engine that borrows once per query from that pool.

Both wall time and this thread's CPU time are reported. Wall time is what a
request feels, but on a shared machine it also carries every scheduling hiccup
of the query's round trip; CPU time leaves the waiting out and is steadier.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass

from loadtests import report
from loadtests.environment import django_environment


@dataclass(frozen=True)
class Variant:
    release: str  # DB_RELEASE
    metrics: bool = True  # the sample site's watcher hears of every checkout
    ping_every_checkout: bool = False
    bare_pool_checkout: bool = False  # and a plain pool's checkout after every query


VARIANTS = {
    "baseline": Variant("request"),
    "release": Variant("cursor"),
    "release, ping every checkout": Variant("cursor", ping_every_checkout=True),
    "baseline, engine alone": Variant("request", metrics=False),
    "release, engine alone": Variant("cursor", metrics=False),
    "baseline, plus a bare pool checkout": Variant("request", metrics=False, bare_pool_checkout=True),
}


# A sample: (wall seconds, CPU seconds) per query, for one request of one variant.
Sample = tuple[float, float]


@dataclass
class PoolOverhead:
    pool: str
    samples: dict[str, list[Sample]]  # per variant, one per round, in round order

    def per_query_us(self, variant: str, cpu: bool = False) -> float:
        """The median over rounds."""
        return statistics.median(sample[cpu] for sample in self.samples[variant]) * 1e6

    def extra_us(self, variant: str, compared_to: str, cpu: bool = False) -> float:
        """How much more `variant` costs per query: the median of the per-round differences.

        Each round runs every variant once, back to back, so a round's
        difference is taken on the machine as it was then; the median of those
        resists a machine that speeds up or slows down during the run better
        than the difference of two medians does.
        """
        return statistics.median(self.differences(variant, compared_to, cpu)) * 1e6

    def spread_us(self, variant: str, compared_to: str, cpu: bool = False) -> float | None:
        """The interquartile range of the per-round differences: how far apart the rounds were."""
        differences = self.differences(variant, compared_to, cpu)
        if len(differences) < 2:
            return None
        first, _, third = statistics.quantiles(differences, n=4)
        return (third - first) * 1e6

    def differences(self, variant: str, compared_to: str, cpu: bool) -> list[float]:
        pairs = zip(self.samples[variant], self.samples[compared_to], strict=True)
        return [a[cpu] - b[cpu] for a, b in pairs]

    def as_json(self) -> dict:
        figures = {
            "per_query_us": {variant: self.per_query_us(variant) for variant in VARIANTS},
            "cpu_per_query_us": {variant: self.per_query_us(variant, cpu=True) for variant in VARIANTS},
            "rounds": len(self.samples["baseline"]),
        }
        for name, (variant, compared_to, cpu) in DIFFERENCES.items():
            figures[name] = self.extra_us(variant, compared_to, cpu)
            figures[name.replace("_us", "_spread_us")] = self.spread_us(variant, compared_to, cpu)
        return figures


# Each figure of as_json(): (variant, compared to, CPU time rather than wall time). Beside each,
# "..._spread_us" is the interquartile range of its per-round differences.
DIFFERENCES = {
    "overhead_us": ("release", "baseline", False),
    "cpu_overhead_us": ("release", "baseline", True),
    "engine_overhead_us": ("release, engine alone", "baseline, engine alone", False),
    "engine_cpu_overhead_us": ("release, engine alone", "baseline, engine alone", True),
    "overhead_with_ping_us": ("release, ping every checkout", "baseline", False),
    "pool_library_us": ("baseline, plus a bare pool checkout", "baseline, engine alone", False),
    "pool_library_cpu_us": ("baseline, plus a bare pool checkout", "baseline, engine alone", True),
}


def plain_pool(pool: str, conn_params: dict) -> tuple[Callable[[], None], Callable[[], None]]:
    """(one checkout and return, close) on a one-connection pool of `pool`'s library, without Django."""
    # Connections in autocommit, as Django keeps them: nothing to roll back on return.
    conn_params = {**conn_params, "autocommit": True}
    if pool == "native":
        from psycopg_pool import ConnectionPool

        psycopg_pool = ConnectionPool(kwargs=conn_params, min_size=1, max_size=1, open=True)
        return lambda: psycopg_pool.putconn(psycopg_pool.getconn()), psycopg_pool.close

    import psycopg
    from sqlalchemy.pool import QueuePool

    # No rollback on return, as the engine skips it for a connection with no
    # transaction open: this is the floor.
    queue_pool = QueuePool(
        lambda: psycopg.connect(**conn_params), pool_size=1, max_overflow=0, reset_on_return=None
    )
    return lambda: queue_pool.connect().close(), queue_pool.dispose


def add_database(alias: str, release: str, pool: str) -> str:
    """A DATABASES entry like "default", with DB_RELEASE=`release` on a small `pool`; returns `alias`."""
    from django.db import connections

    from project.database import engine_for, with_pool

    base = connections["default"].settings_dict
    connections.settings[alias] = with_pool(
        {**base, "ENGINE": engine_for(release, pool)}, pool, min_size=1, max_size=2, timeout=5
    )
    return alias


def measure(pools: list[str], queries: int, rounds: int, warmup: int = 5) -> list[PoolOverhead]:
    from django.contrib.contenttypes.models import ContentType
    from django.db import connections

    from backends import health, instrumentation

    with ExitStack() as cleanup:  # pools closed and the trust window restored, whatever happens
        cleanup.callback(setattr, health, "TRUST_WINDOW_SECONDS", health.TRUST_WINDOW_SECONDS)
        aliases: dict[tuple[str, str], str] = {}
        for pool in pools:
            for number, (name, variant) in enumerate(VARIANTS.items()):
                alias = aliases[pool, name] = add_database(f"bench_{pool}_{number}", variant.release, pool)
                cleanup.callback(connections[alias].close_pool)
        bare_checkouts = {}
        for pool in pools:
            bare_checkouts[pool], close = plain_pool(pool, connections["default"].get_connection_params())
            cleanup.callback(close)
        pk = ContentType.objects.order_by("pk").values_list("pk", flat=True).first()

        def one_request(alias: str, bare_checkout: Callable[[], None] | None) -> Sample:
            started, cpu_started = time.perf_counter(), time.thread_time()
            for _ in range(queries):
                ContentType.objects.using(alias).filter(pk=pk).first()
                if bare_checkout is not None:
                    bare_checkout()
            connections[alias].close()  # the end of the request
            return (time.perf_counter() - started) / queries, (time.thread_time() - cpu_started) / queries

        samples: dict[tuple[str, str], list[Sample]] = {key: [] for key in aliases}
        trusted_window = health.TRUST_WINDOW_SECONDS
        for round_number in range(warmup + rounds):
            keys = list(aliases)
            random.shuffle(keys)
            for key in keys:
                variant = VARIANTS[key[1]]
                health.TRUST_WINDOW_SECONDS = -1.0 if variant.ping_every_checkout else trusted_window
                bare_checkout = bare_checkouts[key[0]] if variant.bare_pool_checkout else None
                with nullcontext() if variant.metrics else instrumentation.unwatched():
                    seconds = one_request(aliases[key], bare_checkout)
                if round_number >= warmup:
                    samples[key].append(seconds)

    return [PoolOverhead(pool, {variant: samples[pool, variant] for variant in VARIANTS}) for pool in pools]


def table(results: list[PoolOverhead]) -> str:
    return "\n".join(report.markdown_table(report.OVERHEAD_HEADER, report.overhead_rows(as_json(results))))


def as_json(results: list[PoolOverhead]) -> dict:
    return {r.pool: r.as_json() for r in results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=200, help="ORM queries per request")
    parser.add_argument("--rounds", type=int, default=40, help="requests per variant")
    parser.add_argument("--pools", default="native,dj_db_conn_pool")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    with django_environment():
        print(
            f"==> timing {args.rounds} requests of {args.queries} ORM queries per engine, one thread",
            file=sys.stderr,
        )
        results = measure(args.pools.split(","), args.queries, args.rounds)
    print(json.dumps(as_json(results), indent=2) if args.json else table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
