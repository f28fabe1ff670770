"""Compare stock Django with early release, side by side, under the same load.

    python -m loadtests.compare [--scenarios raw,orm] [--duration 20] [--pool-sizes 1,2,4,8,16,32] ...
    python -m loadtests.compare --server asgi --scenarios async [--pool-sizes 1,2,4,8,16,32,64]
    python -m loadtests.compare --target release=URL --target baseline=URL [--target ceiling=URL]

With nothing running and no Docker: starts the embedded PostgreSQL (or uses
DATABASE_URL), migrates and seeds, then for each scenario serves the shop under
gunicorn once per side, one at a time, with the same configuration but the
engine and the pool: stock Django (baseline), release, the ceiling (what the
server can do at all: stock Django with every connection it can use), and stock
Django behind PgBouncer when a pgbouncer binary is there.

Each scenario runs under WSGI (gunicorn's threads) or ASGI (gunicorn with
uvicorn workers; `async` by default, any with --server asgi). Under WSGI the
ceiling's pool is as large as the threads; under ASGI nothing but the clients
bounds the requests in flight, so it is the largest pool the server's
max_connections leaves room for. It runs Locust
headless against each for a bounded time, reads the server's own /metrics
before and after, stops everything it started and puts the shop's stock back.
Writes report.json, report.md and report.html (with PNG charts) to --out
(default reports/<timestamp>/) and prints the summary.

The `tasks` scenario has no site and no Locust: each side is a Celery worker
(threads pool, as many threads as --threads) that this run starts, and N
queued tasks (--tasks) are its load; its req/s are tasks a second
(loadtests.tasks).

With --pool-sizes, stock and release run at each pool size instead, and the
report says how many connections each needs. With --target, the sites are
already running (under Docker Compose, say): nothing is started, but the
task workers of `tasks`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from loadtests import database, pgbouncer, report, rounds, tasks
from loadtests.arguments import parse_args
from loadtests.machine import machine
from loadtests.sampler import say
from loadtests.scenarios import DEFAULT_USERS, WORKER_SCENARIOS, server_of
from loadtests.side import TITLES, Load, Remote, Side, measure_side, pool_size_of, ratio, server_of_site
from loadtests.site import Site, SiteConfig, StartError, ensure_port_free

# Seconds a side takes besides its load: gunicorn's start, the idle-server
# timing, Locust's start and stop, the drain (measured on a 2-core VM).
SIDE_OVERHEAD_SECONDS = 7
PREPARE_SECONDS = 20  # migrate, seed, collect static files
OVERHEAD_SECONDS_PER_ROUND = 0.5  # the per-query benchmark, one pool
NEEDED_SHARE = 0.95  # "connections needed": the smallest pool reaching this share of the best
PREDICTION_TOLERANCE = 0.5  # a predicted pool agrees within this share of the measured one (or 1)


@dataclass(frozen=True)
class Run:
    """One side of one scenario, in one round."""

    scenario: str
    side: Side
    round: int
    position: int  # which of the scenario's sides in this round it is: 1 ran first
    sweep: bool = False  # part of a pool-size sweep
    rounds: int = 1  # of how many

    @property
    def files(self) -> str:
        """The stem of the side's own files (Locust's reports, gunicorn's log)."""
        name = f"{self.scenario}-{self.side.name}"
        if self.sweep:
            name += f"-pool{self.side.pool_size}"
        return name + (f"-round{self.round}" if self.rounds > 1 else "")


def users_of(args, scenario: str) -> int | None:
    """Locust's users for `scenario`; None for a task worker's, whose load is --tasks."""
    server = server_of(scenario, args.server)
    return None if server == "worker" else args.users or DEFAULT_USERS[server]


def started_here(args, scenario: str) -> bool:
    """Whether this run starts what serves `scenario`: always, but for sites given with --target."""
    return not args.targets or scenario in WORKER_SCENARIOS


def ceiling_pool(args, scenario: str) -> int:
    """The ceiling's pool per worker: one connection per thread, or under ASGI the most the server allows."""
    if server_of(scenario, args.server) == "asgi":
        return max(1, args.connections_allowed // args.workers)
    return args.threads


def sides(args, scenario: str) -> list[Side]:
    """The sides `scenario` runs (without a sweep)."""
    if not started_here(args, scenario):
        return [Side(name, "", 0) for name in TITLES if name in args.targets]
    chosen = [Side("baseline", "request", args.pool_size), Side("release", "cursor", args.pool_size)]
    if args.ceiling:
        chosen.append(Side("ceiling", "request", ceiling_pool(args, scenario)))
    if args.pgbouncer and not args.targets:  # a worker beside running sites has no PgBouncer of its own
        # As many server connections as the release side has in all its workers.
        chosen.append(
            Side(
                "pgbouncer",
                "request",
                ceiling_pool(args, scenario),
                server_connections=args.pool_size * args.workers,
            )
        )
    return chosen


def sweep_sides(args, scenario: str) -> list[list[Side]]:
    """Sides in groups that alternate: stock and release at each size, the ceiling if not among them."""
    groups = [
        [Side("baseline", "request", size), Side("release", "cursor", size)] for size in args.pool_sizes
    ]
    if args.ceiling and args.pool_sizes[-1] < ceiling_pool(args, scenario):
        groups.append([Side("ceiling", "request", ceiling_pool(args, scenario))])
    return groups


def plan(args) -> list[Run]:
    """Every run in order. The side that goes first alternates from scenario to scenario and round to round.

    The sides of a scenario run one after the other; on a machine that speeds
    up or slows down during a run, the side that runs later is helped or hurt.
    Alternating keeps that from always falling on the same side.
    """
    runs = []
    for index, scenario in enumerate(args.scenarios):
        for round_number in range(1, args.rounds + 1):
            flip = (index + round_number - 1) % 2 == 1
            if args.pool_sizes:
                for group_index, group in enumerate(sweep_sides(args, scenario)):
                    ordered = group[::-1] if (flip ^ (group_index % 2 == 1)) else group
                    runs += [
                        Run(scenario, side, round_number, position, side.name != "ceiling", args.rounds)
                        for position, side in enumerate(ordered, start=1)
                    ]
            else:
                ordered = side_order(sides(args, scenario), flip)
                runs += [
                    Run(scenario, side, round_number, p, rounds=args.rounds)
                    for p, side in enumerate(ordered, start=1)
                ]
    return runs


def side_order(chosen: list, flip: bool) -> list:
    return chosen[::-1] if flip else chosen


def estimate_seconds(args, runs: list[Run]) -> float:
    seconds = sum(run_seconds(args, run) for run in runs)
    if not args.targets or args.prepare_database:
        seconds += PREPARE_SECONDS + args.overhead_rounds * OVERHEAD_SECONDS_PER_ROUND
    return seconds


def run_seconds(args, run: Run) -> float:
    if run.scenario in WORKER_SCENARIOS:
        return tasks.expected_seconds(run.side, args)
    return args.duration + (0 if args.targets else SIDE_OVERHEAD_SECONDS)


def describe_plan(args, runs: list[Run]) -> str:
    per_side = args.duration + (0 if args.targets else SIDE_OVERHEAD_SECONDS)
    minutes = estimate_seconds(args, runs) / 60
    scenarios = ", ".join(load_text(args, name) for name in args.scenarios)
    if args.pool_sizes:
        what = f"pool sizes {','.join(map(str, args.pool_sizes))} x stock and release"
    else:
        chosen = sides(args, args.scenarios[0])
        what = f"{len(chosen)} sides ({', '.join(TITLES[s.name] for s in chosen)})"
    if args.ceiling and not args.targets:
        what += "; the ceiling is stock with " + ceiling_text(args)
    rounds_text = f" x {args.rounds} rounds" if args.rounds > 1 else ""
    return (
        f"plan: {len(args.scenarios)} scenario(s): {scenarios} x {what}{rounds_text} = "
        f"{len(runs)} runs (~{per_side} s each with Locust), about {minutes:.0f} min in all"
    )


def load_text(args, scenario: str) -> str:
    server = server_of(scenario, args.server)
    if server == "worker":
        tasks_text = f"{args.tasks} tasks of {args.task_latency_ms} ms"
        return f"{scenario} (worker of {args.threads} threads, {tasks_text})"
    return f"{scenario} ({server}, {users_of(args, scenario)} users)"


def ceiling_text(args) -> str:
    """What the ceiling's pool is, under each server the plan uses."""
    servers = dict.fromkeys(server_of(name, args.server) for name in args.scenarios)
    texts = {
        "wsgi": f"a pool of {args.threads} (one per thread) under wsgi",
        "worker": f"a pool of {args.threads} (one per thread) in the worker",
        "asgi": f"a pool of {max(1, args.connections_allowed // args.workers)} under asgi "
        "(all the server's max_connections leaves: threads do not bound asgi)",
    }
    return " and ".join(texts[server] for server in servers)


def run_one(run: Run, number: int, total: int, args, load: Load) -> dict:
    if run.scenario in WORKER_SCENARIOS:
        return measure_tasks(run, number, total, args)
    result = measure_run(run, number, total, args, load)
    result.setdefault("server", server_of(run.scenario, args.server))
    result["users"] = load.users
    return result


def measure_tasks(run: Run, number: int, total: int, args) -> dict:
    """One side of `tasks`: a worker this run starts, through PgBouncer for that side."""
    side = run.side
    label = f"side {number}/{total} {run.scenario}/{side.name}"
    if run.sweep:
        label += f" (pool {side.pool_size})"
    if run.rounds > 1:
        label += f" (round {run.round}/{run.rounds})"
    with ExitStack() as stack:
        env = stack.enter_context(through_pgbouncer(side, args)) if side.server_connections else None
        result = tasks.measure_side(side, args, label, run.files, env)
    if side.server_connections:
        result["server_connections"] = side.server_connections
    return result


@contextmanager
def through_pgbouncer(side: Side, args) -> Iterator[dict[str, str]]:
    """PgBouncer in front of the database for `side`; the environment that sends a site or worker there."""
    with pgbouncer.PgBouncer(
        os.environ["DATABASE_URL"], args.port + 1, side.server_connections, args.out
    ) as bouncer:
        # Server-side cursors do not survive transaction pooling (Django's docs).
        yield {"DATABASE_URL": bouncer.url, "DB_DISABLE_SERVER_SIDE_CURSORS": "1"}


def measure_run(run: Run, number: int, total: int, args, load: Load) -> dict:
    side = run.side
    server = server_of(run.scenario, args.server)
    label = f"side {number}/{total} {run.scenario}/{side.name}"
    if run.sweep:
        label += f" (pool {side.pool_size})"
    if run.rounds > 1:
        label += f" (round {run.round}/{run.rounds})"
    measured = dict(workers=args.workers, threads=args.threads if server == "wsgi" else None)
    if args.targets:
        url = args.targets[side.name]
        # The site reports its pools added up over its workers; --workers says how many it has.
        in_all = pool_size_of(url)
        pool_size = max(1, in_all // args.workers) if in_all else args.pool_size
        say(f"{label}: {load.users} users for {args.duration} s against {url} (pool {in_all or '?'} in all)")
        result = measure_side(Remote(url), load, label, run.files, pool_size=pool_size, **measured)
        result["url"] = url
        # What the site runs under, where it says (compose picks it with SERVER).
        result["server"] = server_of_site(url) or server
        return result
    config = SiteConfig(
        release=side.release,
        pool=args.pool,
        pool_size=side.pool_size,
        workers=args.workers,
        threads=args.threads,
        external_latency_ms=args.external_latency_ms,
        server=server,
    )
    with ExitStack() as stack:
        env = {}
        through = ""
        if side.server_connections:
            env = stack.enter_context(through_pgbouncer(side, args))
            through = f", through PgBouncer with {side.server_connections} server connections"
        workers = (
            f"{args.workers}x{args.threads} threads"
            if server == "wsgi"
            else f"{args.workers} uvicorn worker{'s' if args.workers > 1 else ''}"
        )
        say(f"{label}: starting gunicorn ({workers}, pool {side.pool_size}{through})")
        site = stack.enter_context(Site(config, args.port, args.out, env, name=run.files))
        say(f"{label}: {load.users} users for {args.duration} s")
        result = measure_side(site, load, label, run.files, pool_size=side.pool_size, **measured)
    if side.server_connections:
        result["server_connections"] = side.server_connections
    return result


def fold(args, runs: list[Run], results_by_run: dict[Run, dict]) -> dict:
    """The figures as report.json has them: scenarios; with a sweep, sweep and connections_needed."""
    out: dict = {"scenarios": {}}
    for scenario in args.scenarios:
        by_side: dict[tuple[str, int | None], list[dict]] = {}
        for run in runs:
            if run.scenario == scenario and run in results_by_run:
                key = (run.side.name, run.side.pool_size if run.sweep else None)
                by_side.setdefault(key, []).append({**results_by_run[run], "ran": run.position})
        combined = {key: rounds.combine(found) for key, found in by_side.items()}
        if args.pool_sizes:
            sweep = {}
            for (name, size), figures in combined.items():
                if size is not None:
                    sweep.setdefault(name, {})[str(size)] = figures
            if not sweep:
                continue  # not started yet
            out.setdefault("sweep", {})[scenario] = sweep
            chosen = str(args.pool_size if args.pool_size in args.pool_sizes else args.pool_sizes[0])
            sides_of = {name: sizes[chosen] for name, sizes in sweep.items() if chosen in sizes}
            if ("ceiling", None) in combined:
                sides_of["ceiling"] = combined["ceiling", None]
            elif args.ceiling and str(args.pool_sizes[-1]) in sweep.get("baseline", {}):
                # Stock with a pool at least as large as the ceiling's.
                sides_of["ceiling"] = sweep["baseline"][str(args.pool_sizes[-1])]
            needed = out.setdefault("connections_needed", {})[scenario] = connections_needed(
                sweep, sides_of.get("ceiling")
            )
            stock = sides_of.get("ceiling")
            if stock and stock.get("predicted_pool") is not None:
                out.setdefault("prediction", {})[scenario] = prediction_check(stock, needed.get("release"))
        else:
            sides_of = {name: figures for (name, _), figures in combined.items()}
        if not sides_of:
            continue
        if "ceiling" in sides_of and "release" in sides_of:
            sides_of["release_of_ceiling"] = ratio(sides_of["release"]["rps"], sides_of["ceiling"]["rps"])
        out["scenarios"][scenario] = {
            name: sides_of[name] for name in [*TITLES, "release_of_ceiling"] if name in sides_of
        }
    return out


def connections_needed(sweep: dict[str, dict[str, dict]], ceiling: dict | None) -> dict[str, int | None]:
    """Per side, the smallest pool size that reaches 95% of the best throughput any side reached."""
    best = max(
        [figures["rps"] for sizes in sweep.values() for figures in sizes.values()]
        + ([ceiling["rps"]] if ceiling else []),
        default=0.0,
    )
    needed = {}
    for name, sizes in sweep.items():
        reaching = [int(size) for size, figures in sizes.items() if figures["rps"] >= NEEDED_SHARE * best]
        needed[name] = min(reaching) if reaching else None
    return needed


def prediction_check(stock: dict, release_needs: int | None) -> dict:
    """manage.py connection_report's pool, predicted from stock with every connection, against the sweep.

    It agrees when it is within 1 connection or 50% of what release measurably
    needed, whichever is larger.
    """
    predicted = math.ceil(stock["predicted_pool"])  # a median of rounds may fall between two
    agrees = None
    if release_needs is not None:
        agrees = abs(predicted - release_needs) <= max(1, PREDICTION_TOLERANCE * release_needs)
    return {
        "stock_pool_size": stock.get("pool_size"),
        "connections_now": stock["predicted_connections_now"],
        "connections_with_release": stock["predicted_connections_with_release"],
        "predicted_pool": predicted,
        "release_needs": release_needs,
        "agrees": agrees,
    }


def decide_pgbouncer(args, notes: list[str]) -> None:
    """Whether the PgBouncer side runs: asked for, or by default when the binary is there."""
    if args.targets:
        args.pgbouncer = "pgbouncer" in args.targets
        return
    if args.pool_sizes:
        if args.pgbouncer:
            notes.append("The PgBouncer side does not run in a pool-size sweep.")
        args.pgbouncer = False
        return
    found = pgbouncer.binary() is not None
    if args.pgbouncer and not found:
        raise StartError(f"--pgbouncer: no pgbouncer on this machine: {pgbouncer.INSTALL_HINT}")
    if args.pgbouncer is None:
        args.pgbouncer = found
        if not found:
            notes.append(
                "The stock + PgBouncer side was skipped: no pgbouncer binary on this machine "
                "(Debian/Ubuntu: apt-get install pgbouncer)."
            )


def target_notes(args) -> list[str]:
    if not args.targets:
        return []
    notes = [
        "Sites given with --target ("
        + ", ".join(f"{side} {url}" for side, url in args.targets.items())
        + "): this run started none of them, so the workers' CPU was not read; the idle-server "
        "timing and every other figure come from the sites' own /metrics and Locust."
    ]
    if not args.prepare_database:
        notes.append(
            "The database was neither prepared nor reset between sides (--prepare-database does both)."
        )
    return notes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, __doc__.split("\n")[0])
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = target_notes(args)
    uses_database = not args.targets or args.prepare_database
    # Leave the machine as we found it: stop the embedded server if this run starts it.
    started_database = (
        uses_database and not os.environ.get("DATABASE_URL") and not database.embedded_server_running()
    )
    shop = None
    results: dict = {}
    try:
        decide_pgbouncer(args, notes)
        if not args.targets:
            ensure_port_free(args.port)  # before starting anything
            if args.pgbouncer:
                ensure_port_free(args.port + 1)
        if uses_database:
            say(f"preparing the database (seed: {args.seed})")
            customers = database.prepare(args.seed, static=not args.targets)
            shop = database.Shop()
        else:
            customers = os.environ.get("SHOP_CUSTOMER_IDS", "1-50")
        # The ASGI ceiling's pool: what max_connections leaves, less what is open now.
        args.connections_allowed = database.connections_allowed() if not args.targets else 0
        runs = plan(args)
        say(describe_plan(args, runs))
        config = {
            **{k: (str(v) if k == "out" else v) for k, v in vars(args).items()},
            # No server with these threads answers requests that wait this long any faster (WSGI).
            "latency_ceiling_rps": args.workers * args.threads * 1000 / max(args.external_latency_ms, 1),
            "machine": machine(),
        }
        results = {"config": config, "notes": notes, "scenarios": {}}
        done: dict[Run, dict] = {}
        for number, run in enumerate(runs, start=1):
            if shop is not None:
                shop.reset()
            load = Load(
                run.scenario,
                users_of(args, run.scenario),
                args.duration,
                args.external_latency_ms,
                customers,
                args.out,
            )
            done[run] = run_one(run, number, len(runs), args, load)
            results.update(fold(args, runs, done))
            report.write(results, args.out)  # keep what is done if a later run fails
        if args.overhead_rounds and uses_database:
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
        if shop is not None:
            shop.restore()
            say("the shop's orders and stock are back as the seed left them")
        if settings.configured:
            connections.close_all()
        if started_database and database.stop_embedded_server():
            say("stopped the embedded PostgreSQL this run started")
    report.write(results, args.out)
    print()
    print(report.summary_markdown(results))
    minutes, seconds = divmod(round(time.monotonic() - started), 60)
    say(
        f"done in {minutes} min {seconds:02d} s; details in {args.out}/report.md, "
        f"charts in {args.out}/report.html"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
