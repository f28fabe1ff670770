"""What one borrow-and-return costs the release engine, in CPU instructions counted by valgrind.

    python -m loadtests.instructions [--pool native] [--checkouts 400] [--metrics] [--orm] [--order]

Wall time per query (loadtests.overhead) moves with whatever else the machine
is doing; an instruction count does not. This runs itself under
``valgrind --tool=callgrind`` in pairs of runs that are identical up to one
loop after the warm-up, and divides the difference of their totals by the
loop's length:

* the engine: N empty cursors on the release engine, which borrows and returns
  a connection for each, against N on stock Django, which keeps its connection
  for the request, so that a cursor costs no checkout;
* the pool library alone: N bare checkouts and returns on a plain pool of the
  same library, without Django, against none: the floor under any engine.

With --orm, two more pairs put a checkout in the context of an ORM query
(``Permission.objects.select_related("content_type")``, a 470-character
statement): N such queries on the release engine against none, the ORM path per
checkout; and the same N queries against N on cursors that do not look for
session-level SQL (``backends.session``), what that look costs on the ORM path.

With --order, the ``atomic`` scenario's work, where release cannot shorten any
hold: one order placed in its transaction (``apps.orders.services.place_order``),
then the end of the request (``close_old_connections()``), N times against none,
on stock Django and on the release engine. Both borrow once per order; what
differs is the engine's own bookkeeping. The orders are placed on the seeded
shop and deleted afterwards, with the stock put back.

Needs valgrind (Debian's package); takes under a minute, about two with --order.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
WARMUP = 50

# What a counted run does in its loop; runs are compared in these pairs.
LOOPS = ("request", "cursor", "plain", "none", "orm", "orm_undetected", "order")
PAIRS = {"engine": ("cursor", "request"), "pool library alone": ("plain", "none")}
ORM_FLAG = "LOADTESTS_INSTRUCTIONS_ORM"
ORM_PAIRS = {
    "ORM query with its checkout": ("orm", "none"),
    "session-state detection on that ORM query": ("orm", "orm_undetected"),
}
ORDER_FLAG = "LOADTESTS_INSTRUCTIONS_ORDER"
# The engine of the "default" alias, which place_order() uses, in the runs of --order.
ORDER_ENGINES = {"stock Django": "request", "release": "cursor"}


def count_in_child(loop: str, pool: str, checkouts: int, metrics: bool) -> None:
    """Runs under valgrind: warm everything up, then run `loop` `checkouts` times."""
    import django

    django.setup()
    from django.db import connections

    from backends import health, instrumentation
    from loadtests.overhead import add_database, plain_pool

    # Under valgrind everything runs tens of times slower: trust every returned
    # connection (its socket is still polled), or a checkout that happens to
    # come more than half a second after the last return pings in one run of a
    # pair and not in the other.
    health.TRUST_WINDOW_SECONDS = float("inf")

    from django.contrib.auth.models import Permission

    from backends.checkout import CountedCursorDebugWrapper, CountedCursorWrapper

    aliases = {release: add_database(f"count_{release}", release, pool) for release in ("request", "cursor")}
    plain_checkout, close_plain_pool = plain_pool(pool, connections["default"].get_connection_params())
    undetected = connections[add_database("count_undetected", "cursor", pool)]
    # The release engine with the baseline's cursors: counted, but blind to session-level SQL.
    undetected.cursor_wrapper_class = CountedCursorWrapper
    undetected.debug_cursor_wrapper_class = CountedCursorDebugWrapper

    def empty_cursor(alias: str) -> None:
        with connections[alias].cursor():
            pass

    def orm_query(alias: str) -> None:
        list(Permission.objects.using(alias).select_related("content_type").filter(codename="none"))

    def order_then_end_of_request() -> None:
        from django.db import close_old_connections

        from apps.orders.services import Wanted, place_order

        place_order(next(customers), [Wanted(next(products), 1)])
        close_old_connections()  # what Django runs when a request ends

    steps = {
        "request": lambda: empty_cursor(aliases["request"]),
        "cursor": lambda: empty_cursor(aliases["cursor"]),
        "plain": plain_checkout,
        "none": lambda: None,  # the loop itself, charged to neither side
        "orm": lambda: orm_query(aliases["cursor"]),
        "orm_undetected": lambda: orm_query(undetected.alias),
        "order": order_then_end_of_request,
    }
    with nullcontext() if metrics else instrumentation.unwatched():
        # Both runs of a pair warm up the same steps: the ORM's only with --orm
        # (which needs the migrated tables), the order's only with --order (the
        # seeded shop), set for every run of that invocation.
        in_play = [aliases["request"], aliases["cursor"]]  # the aliases the steps borrow on
        if os.environ.get(ORM_FLAG):
            in_play.append(undetected.alias)
        else:
            del steps["orm"], steps["orm_undetected"]
        if os.environ.get(ORDER_FLAG):
            in_play.append("default")
        else:
            del steps["order"]
        fill_pools([connections[alias] for alias in in_play])
        if "order" in steps:
            from apps.catalog.models import Product
            from apps.customers.models import Customer

            # The same customers and products, in the same order, in every run.
            customers = itertools.cycle(Customer.objects.order_by("pk").values_list("pk", flat=True)[:50])
            products = itertools.cycle(Product.objects.order_by("pk").values_list("pk", flat=True)[:50])
        for _ in range(WARMUP):
            for step in steps.values():
                step()
        step = steps[loop]
        for _ in range(checkouts):
            step()
    connections.close_all()
    close_plain_pool()


def fill_pools(wrappers: list) -> None:
    """Wait until the psycopg_pool of each of `wrappers` (Django connections) has its min_size connections.

    A checkout that finds its pool still connecting in the background makes
    psycopg_pool open one more connection where max_size allows. Whether it
    does depends on timing, so it can happen in one run of a pair and not in
    the other: a connection is about 1.2 million instructions, 24,000 a
    checkout over 50. Filled first, no checkout waits. (django-db-connection-pool
    connects in the caller, on demand.)
    """
    from psycopg_pool import ConnectionPool

    for wrapper in wrappers:
        pool = getattr(wrapper, "pool", None)
        if isinstance(pool, ConnectionPool):
            pool.open(wait=True)


def counted_run(
    valgrind: str, out_dir: str, loop: str, pool: str, checkouts: int, metrics: bool, release: str | None
):
    command = [valgrind, "--tool=callgrind", f"--callgrind-out-file={out_dir}/{loop}.out"]
    command += [sys.executable, "-m", "loadtests.instructions", "--child", loop]
    command += ["--pool", pool, "--checkouts", str(checkouts)] + (["--metrics"] if metrics else [])
    # The same hash seed in every run, so that runs do the same work up to their loop.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if release is not None:  # the "default" alias on this engine and `pool` (project.settings)
        env.update(DB_RELEASE=release, DB_POOL=pool)
    return subprocess.Popen(
        command, cwd=BASE_DIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def collected(run: subprocess.Popen) -> int:
    """The instruction total valgrind reports at the end of a run."""
    _, stderr = run.communicate()
    found = re.search(r"Collected : (\d+)", stderr)
    if run.returncode != 0 or found is None:
        raise SystemExit(f"the counted run failed (exit {run.returncode}):\n{stderr[-3000:]}")
    return int(found.group(1))


def instructions_per_checkout(
    valgrind: str, pair: tuple[str, str], pool: str, checkouts: int, metrics: bool, release: str | None = None
) -> float:
    """(instructions of the first loop's run - the second's) / checkouts; the two run side by side.

    `release`: the engine of the "default" alias in both runs (DB_RELEASE), else the settings' own.
    """
    with tempfile.TemporaryDirectory() as out_dir:
        runs = [counted_run(valgrind, out_dir, loop, pool, checkouts, metrics, release) for loop in pair]
        try:
            measured, reference = (collected(run) for run in runs)
        finally:
            for run in runs:  # the other one, when one failed
                if run.poll() is None:
                    run.kill()
                    run.wait()
    return (measured - reference) / checkouts


def migrate_for_the_orm_query() -> None:
    """The ORM query reads Django's auth tables: a new database has none until migrated."""
    from django.db import connections

    from devtools.serve import prepare

    prepare(None, static=False)
    connections.close_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pool", choices=("native", "dj_db_conn_pool"), default="native")
    parser.add_argument("--checkouts", type=int, default=400, help="checkouts counted per run (default 400)")
    parser.add_argument("--metrics", action="store_true", help="with the sample site's Prometheus metrics")
    parser.add_argument("--orm", action="store_true", help="also the ORM path, and session detection")
    parser.add_argument(
        "--order", action="store_true", help="also one order's transaction per request, stock and release"
    )
    parser.add_argument("--child", choices=LOOPS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.checkouts < 1:
        parser.error("--checkouts must be at least 1")

    if args.child:
        count_in_child(args.child, args.pool, args.checkouts, args.metrics)
        return 0

    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2

    from devtools.serve import configure_environment

    configure_environment()  # the database, started here rather than under valgrind
    print(f"==> counting {args.checkouts} checkouts per run under valgrind", file=sys.stderr)
    if args.orm:
        migrate_for_the_orm_query()
        os.environ[ORM_FLAG] = "1"  # the counted runs inherit it: every run warms up the ORM too
    for name, pair in PAIRS.items():
        per_checkout = instructions_per_checkout(valgrind, pair, args.pool, args.checkouts, args.metrics)
        if name == "engine" and args.metrics:
            name = "engine, with the sample site's metrics"
        print(f"{args.pool}, {name}: {per_checkout:,.0f} instructions per checkout and return", flush=True)
    if args.orm:
        figures = {
            name: instructions_per_checkout(valgrind, pair, args.pool, args.checkouts, args.metrics)
            for name, pair in ORM_PAIRS.items()
        }
        for name, per_query in figures.items():
            print(f"{args.pool}, {name}: {per_query:,.0f} instructions per query", flush=True)
        share = next(reversed(figures.values())) / next(iter(figures.values()))
        print(f"{args.pool}, session-state detection: {share:+.2%} of the ORM path per checkout", flush=True)
    if args.order:
        count_orders(valgrind, args.pool, args.checkouts, args.metrics)
    return 0


def count_orders(valgrind: str, pool: str, orders: int, metrics: bool) -> None:
    """Instructions per order and end of request on each engine; the shop left as found."""
    from devtools.serve import prepare
    from loadtests.database import Shop

    prepare("small", static=False)  # migrated, as for the ORM query, and seeded
    shop = Shop()
    shop.reset()  # stock for every order the runs place
    os.environ[ORDER_FLAG] = "1"
    try:
        figures = {
            name: instructions_per_checkout(valgrind, ("order", "none"), pool, orders, metrics, release)
            for name, release in ORDER_ENGINES.items()
        }
    finally:
        del os.environ[ORDER_FLAG]
        shop.restore()
    for name, per_order in figures.items():
        print(
            f"{pool}, one order and the end of its request, {name}: {per_order:,.0f} instructions", flush=True
        )
    stock, release = figures.values()
    print(f"{pool}, release against stock Django per order: {release / stock - 1:+.2%}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
