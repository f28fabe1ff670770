"""What a dead pooled connection costs a request: python -m loadtests.deadconn [--rounds 20]

With no load, for each engine (release and baseline, on both pools) and for a bare
psycopg_pool with the check Django gives it: fill a pool of --size connections,
terminate every one of their server processes from another connection, then time the
next query (checkout, SELECT 1, give back). The engines pass over the dead connections
and connect anew; psycopg_pool on its own sleeps about a second after a failed check.

It uses DATABASE_URL, or the embedded server (started if needed), and terminates only
the connections it opened. Prints the median and the slowest round, in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
from time import perf_counter

ENGINES = [
    ("cursor", "native"),
    ("request", "native"),
    ("cursor", "dj_db_conn_pool"),
    ("request", "dj_db_conn_pool"),
]


def say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def configure(size: int) -> list[str]:
    """Django set up with one alias per engine, each with a pool of `size`; the aliases."""
    import django
    from django.conf import settings

    from devtools.serve import configure_environment
    from project.database import database_settings

    url = configure_environment()
    aliases = []
    for release, pool in ENGINES:
        alias = f"{release}_{pool}"
        settings.DATABASES[alias] = database_settings(
            url, release=release, pool=pool, min_size=size, max_size=size, timeout=5.0
        )
        aliases.append(alias)
    django.setup()
    return aliases


def fill(alias: str, size: int) -> list[int]:
    """Have `size` connections idle in the pool at once; their server process ids."""
    from django.db import connections, transaction

    ready, done = threading.Barrier(size + 1), threading.Event()
    pids: list[int] = []

    def hold_one() -> None:
        try:
            with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                pids.append(cursor.fetchone()[0])
                ready.wait(10)
                done.wait(10)
        finally:
            connections[alias].close()

    threads = [threading.Thread(target=hold_one) for _ in range(size)]
    for thread in threads:
        thread.start()
    ready.wait(10)
    done.set()
    for thread in threads:
        thread.join(10)
    return pids


def terminate(pids: list[int]) -> None:
    from django.db import connections

    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT count(pg_terminate_backend(pid, 5000)) FROM unnest(%s::int[]) AS pid", [pids])


def one_query(alias: str) -> float:
    from django.db import connections

    started = perf_counter()
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
    connections[alias].close()
    return perf_counter() - started


def engine_rounds(alias: str, size: int, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        terminate(fill(alias, size))
        times.append(one_query(alias))
    return times


def bare_pool_rounds(size: int, rounds: int) -> list[float]:
    """psycopg_pool as Django builds it with CONN_HEALTH_CHECKS on, without the engines."""
    from django.db import connections
    from psycopg_pool import ConnectionPool

    params = {**connections["default"].get_connection_params(), "autocommit": True}
    pool = ConnectionPool(
        kwargs=params, min_size=size, max_size=size, check=ConnectionPool.check_connection, open=True
    )
    times = []
    try:
        for _ in range(rounds):
            pool.wait(10)
            conns = [pool.getconn() for _ in range(size)]
            pids = [conn.info.backend_pid for conn in conns]
            for conn in conns:
                pool.putconn(conn)
            terminate(pids)
            started = perf_counter()
            conn = pool.getconn()
            conn.execute("SELECT 1")
            pool.putconn(conn)
            times.append(perf_counter() - started)
    finally:
        pool.close()
    return times


def line(name: str, times: list[float]) -> str:
    median, worst = statistics.median(times) * 1000, max(times) * 1000
    return f"| {name} | {len(times)} | {median:.1f} | {worst:.1f} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.deadconn", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--size", type=int, default=4, help="connections in the pool, all killed (default 4)")
    args = parser.parse_args(argv)

    aliases = configure(args.size)
    print(f"Every idle connection of a pool of {args.size} terminated, then one query: milliseconds")
    print("| engine | rounds | median | slowest |\n|---|---:|---:|---:|")
    for alias in aliases:
        say(f"{alias}: {args.rounds} rounds")
        release, pool = alias.split("_", 1)
        name = f"{'release' if release == 'cursor' else 'baseline'} on {pool}"
        print(line(name, engine_rounds(alias, args.size, args.rounds)), flush=True)
    say(f"bare psycopg_pool: {min(args.rounds, 5)} rounds")
    print(line("psycopg_pool alone, Django's check", bare_pool_rounds(args.size, min(args.rounds, 5))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
