"""What early release costs per query: release against stock Django on the same pool, one thread.

    python -m loadtests.overhead [--queries 200] [--rounds 40] [--pools native,dj_db_conn_pool]

A "request" runs N small ORM queries and then ends (Django's end-of-request
close). The stock engine borrows one connection for the N queries; the release
engine borrows and returns one per query. The difference per query is the price
of a checkout: the pool's bookkeeping, Django's connect/close, the health check
and the metrics. Engines run interleaved, round after round, and the medians
are compared, so a busy machine slows both sides alike.

A third variant pings the connection on every checkout (what CONN_HEALTH_CHECKS
and QueuePool's pre_ping do out of the box) to show what the idle-window check
saves.

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
from dataclasses import asdict, dataclass

from loadtests import report
from loadtests.environment import django_environment

VARIANTS = ("baseline", "release", "release, ping every checkout")


@dataclass
class PoolOverhead:
    pool: str
    per_query_us: dict[str, float]  # wall time, median over rounds, per variant
    cpu_per_query_us: dict[str, float]  # this thread's CPU time, median over rounds

    @property
    def overhead_us(self) -> float:
        return self.per_query_us["release"] - self.per_query_us["baseline"]

    @property
    def overhead_with_ping_us(self) -> float:
        return self.per_query_us["release, ping every checkout"] - self.per_query_us["baseline"]

    @property
    def cpu_overhead_us(self) -> float:
        return self.cpu_per_query_us["release"] - self.cpu_per_query_us["baseline"]


def measure(pools: list[str], queries: int, rounds: int, warmup: int = 5) -> list[PoolOverhead]:
    from django.contrib.contenttypes.models import ContentType
    from django.db import connections

    from backends import health
    from project.database import engine_for, with_pool

    base = connections["default"].settings_dict
    aliases: dict[tuple[str, str], str] = {}
    for pool in pools:
        for variant in VARIANTS:
            alias = f"bench_{pool}_{VARIANTS.index(variant)}"
            release = "request" if variant == "baseline" else "cursor"
            connections.settings[alias] = with_pool(
                {**base, "ENGINE": engine_for(release, pool)}, pool, min_size=1, max_size=2, timeout=5
            )
            aliases[pool, variant] = alias
    pk = ContentType.objects.order_by("pk").values_list("pk", flat=True).first()

    def one_request(alias: str) -> tuple[float, float]:
        started, cpu_started = time.perf_counter(), time.thread_time()
        for _ in range(queries):
            ContentType.objects.using(alias).filter(pk=pk).first()
        connections[alias].close()  # the end of the request
        return (time.perf_counter() - started) / queries, (time.thread_time() - cpu_started) / queries

    samples: dict[tuple[str, str], list[tuple[float, float]]] = {key: [] for key in aliases}
    trusted_window = health.TRUST_WINDOW_SECONDS
    for round_number in range(warmup + rounds):
        keys = list(aliases)
        random.shuffle(keys)
        for key in keys:
            pings_every_time = key[1] == "release, ping every checkout"
            health.TRUST_WINDOW_SECONDS = -1.0 if pings_every_time else trusted_window
            seconds = one_request(aliases[key])
            if round_number >= warmup:
                samples[key].append(seconds)
    health.TRUST_WINDOW_SECONDS = trusted_window

    for alias in aliases.values():
        connections[alias].close_pool()

    def median_us(key: tuple[str, str], which: int) -> float:
        return statistics.median(sample[which] for sample in samples[key]) * 1e6

    return [
        PoolOverhead(
            pool=pool,
            per_query_us={variant: median_us((pool, variant), 0) for variant in VARIANTS},
            cpu_per_query_us={variant: median_us((pool, variant), 1) for variant in VARIANTS},
        )
        for pool in pools
    ]


def table(results: list[PoolOverhead]) -> str:
    return "\n".join(report.markdown_table(report.OVERHEAD_HEADER, report.overhead_rows(as_json(results))))


def as_json(results: list[PoolOverhead]) -> dict:
    return {
        r.pool: {
            **asdict(r),
            "overhead_us": r.overhead_us,
            "overhead_with_ping_us": r.overhead_with_ping_us,
            "cpu_overhead_us": r.cpu_overhead_us,
        }
        for r in results
    }


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
