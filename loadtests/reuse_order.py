"""Which idle connection the pool hands out next, oldest (FIFO) or newest (LIFO), and what it costs.

    python -m loadtests.reuse_order [--users 8] [--seconds 10] [--pools native,dj_db_conn_pool]

Users (threads) on the release engine each run a query, then wait a while (an
external call, a template), over and over, on a pool as large as the users. A
pool that hands out its oldest idle connection cycles through all of them, so a
connection is often idle for longer than the checkout check's trust window
(half a second) and is pinged; one that hands out the newest keeps reusing a
few, which stay trusted, and lets the others sit idle where ``max_idle`` can
close them. Reported per pool and order: checkouts, pings per checkout, and how
many distinct connections served them.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from collections import deque

from loadtests.environment import django_environment


def hold_one(alias: str) -> None:
    from django.db import connections, transaction

    with transaction.atomic(using=alias):
        connections[alias].cursor().execute("SELECT pg_sleep(0.3)")
    connections[alias].close()


def run(pool: str, lifo: bool, users: int, seconds: float, think: tuple[float, float]) -> dict:
    from backends import compat

    real = compat.hand_out_newest_first
    if not lifo:  # every thread's wrapper would set the engines' order again on the pool it finds
        compat.hand_out_newest_first = lambda pool: None
    try:
        return _run(pool, lifo, users, seconds, think)
    finally:
        compat.hand_out_newest_first = real


def _run(pool: str, lifo: bool, users: int, seconds: float, think: tuple[float, float]) -> dict:
    from django.db import connections

    from backends import compat, health
    from project.database import engine_for, with_pool

    alias = f"reuse_{pool}_{'lifo' if lifo else 'fifo'}"
    base = connections["default"].settings_dict
    connections.settings[alias] = with_pool(
        {**base, "ENGINE": engine_for("cursor", pool)}, pool, min_size=users, max_size=users, timeout=10
    )
    pings, checkouts, seen, counting = [0], [0], set(), [False]
    lock = threading.Lock()
    real_needs_ping = health.needs_ping

    def counting_needs_ping(dbapi_connection) -> bool:
        # Each True is a ping: QueuePool's pre-ping and the native check ask once per checkout.
        answer = real_needs_ping(dbapi_connection)
        if answer and counting[0]:
            with lock:
                pings[0] += 1
        return answer

    def user(stop: float) -> None:
        rng = random.Random()
        while time.monotonic() < stop:
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                pid = cursor.fetchone()[0]
            if counting[0]:
                with lock:
                    checkouts[0] += 1
                    seen.add(pid)
            time.sleep(rng.uniform(*think))  # the external call
        connections[alias].close()

    # Open the pool, every connection of it (a pool warmed by an earlier burst), and set the order.
    wrapper = connections[alias]
    warm = [threading.Thread(target=lambda: hold_one(alias)) for _ in range(users)]
    for thread in warm:
        thread.start()
    for thread in warm:
        thread.join()
    # The engines hand out the newest first; put the pools' own order back for FIFO.
    if pool == "native":
        if lifo:
            compat.hand_out_newest_first(wrapper.pool)
        else:
            wrapper.pool._pool = deque(wrapper.pool._pool)
    else:
        wrapper.queue_pool._pool.use_lifo = lifo
    health.needs_ping = counting_needs_ping
    try:
        stop = time.monotonic() + seconds + 2
        threads = [threading.Thread(target=user, args=(stop,)) for _ in range(users)]
        for thread in threads:
            thread.start()
        time.sleep(2)  # the users' first queries all come at once: counted from here
        counting[0] = True
        for thread in threads:
            thread.join()
    finally:
        health.needs_ping = real_needs_ping
        wrapper.close()
        wrapper.close_pool()
    return {"checkouts": checkouts[0], "pings": pings[0], "connections": len(seen)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--pools", default="native,dj_db_conn_pool")
    parser.add_argument("--think", default="0.2,1.0", help="seconds each user waits between queries: min,max")
    args = parser.parse_args(argv)
    with django_environment():
        for pool in args.pools.split(","):
            for lifo in (False, True):
                think = tuple(float(x) for x in args.think.split(","))
                figures = run(pool, lifo, args.users, args.seconds, think)
                order = "newest first (LIFO)" if lifo else "oldest first (FIFO)"
                per = figures["pings"] / max(figures["checkouts"], 1)
                print(
                    f"{pool}, {order}, {args.users} users thinking {args.think}s: "
                    f"{figures['checkouts']} checkouts, {per:.2f} pings per checkout, "
                    f"{figures['connections']} connections used",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
