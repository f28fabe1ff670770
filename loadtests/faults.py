"""The shop under load while its database fails: backends killed, PostgreSQL stopped and started.

    python -m loadtests.faults                       # release and baseline, both pools
    python -m loadtests.faults --sides release --pools native --faults kill

For each engine it serves the shop under gunicorn on a PostgreSQL of its own (an
embedded server in a temporary folder, never the project's .localdb), runs Locust's
MixedUser against it, and meanwhile:

    kill        terminates --kill-count backends (pg_terminate_backend) every
                --kill-every seconds, for --kill-seconds
    outage-N    stops PostgreSQL for N seconds mid-load (--outages 5,15), then starts it

Every response is logged; the table gives, per engine and fault: responses, 500s,
503s, other failures (no answer, other statuses), the 99th percentile, ORM reads
retried (db_query_retries_total), and for an outage the time to recover: from the
moment PostgreSQL accepts connections again to the end of the last failed response.
The machine runs the load, the site and PostgreSQL together: run nothing else
meanwhile, and compare figures from the same machine only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg

from loadtests.site import BASE_DIR, Site, SiteConfig

ENGINES = {"release": "cursor", "baseline": "request"}


def say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


class DedicatedServer:
    """An embedded PostgreSQL in `directory`, for this run alone, that can be stopped and started."""

    def __init__(self, directory: Path) -> None:
        from devtools.localdb import LocalDatabase

        self.local = LocalDatabase(directory)
        self.server = None

    def start(self):
        self.server = self.local.ensure_running("shop")
        return self.server

    def stop(self) -> None:
        self.local.stop()

    def url(self) -> str:
        return self.server.url("shop")

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(
            host=str(self.server.socket_dir),
            port=self.server.port,
            user="postgres",
            dbname="shop",
            autocommit=True,
        )


def manage(env: dict, *args: str) -> None:
    subprocess.run(
        [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, check=True, stdout=subprocess.DEVNULL
    )


def terminate_backends(conn: psycopg.Connection, count: int | None = None) -> int:
    """Terminate `count` of the shop's server sessions, chosen at random (every one if None), other
    than `conn`'s own; how many ended."""
    rows = conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'shop' "
        "AND backend_type = 'client backend' AND pid <> pg_backend_pid() "
        "ORDER BY random() LIMIT %s",
        [count],  # LIMIT NULL: no limit
    ).fetchall()
    return sum(1 for (done,) in rows if done)


class Killer(threading.Thread):
    """Terminates `count` of the shop's backends every `every` seconds until stopped."""

    def __init__(self, server: DedicatedServer, count: int, every: float) -> None:
        super().__init__(name="killer", daemon=True)
        self.server, self.count, self.every = server, count, every
        self.stopping = threading.Event()
        self.killed = 0

    def run(self) -> None:
        with self.server.connect() as conn:
            while not self.stopping.wait(self.every):
                self.killed += terminate_backends(conn, self.count)

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


@dataclass
class Result:
    engine: str
    pool: str
    fault: str
    responses: int
    errors_500: int
    errors_503: int
    other_failures: int
    p99_ms: float
    retries: float
    recover_s: float | None  # outages only: server back -> end of the last failed response
    first_ok_s: float | None  # outages only: server back -> end of the first successful response
    killed: int | None  # kills only
    pages_500: dict[str, int]  # which pages answered 500, and how often


def retries_so_far(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("db_query_retries_total{")
    )


def run_locust(url: str, users: int, seconds: int, log: Path, user: str = "MixedUser") -> subprocess.Popen:
    """Locust headless, `users` of class `user`, every request written to `log` (loadtests/faultlog.py)."""
    env = {**os.environ, "FAULTS_REQUEST_LOG": str(log), "SHOP_CUSTOMER_IDS": "1-50"}
    command = [
        sys.executable, "-m", "locust", "-f", str(BASE_DIR / "loadtests" / "faultlog.py"), user,
        "--headless", "--users", str(users), "--spawn-rate", str(users), "--run-time", f"{seconds}s",
        "--host", url, "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "10",
    ]  # fmt: skip
    return subprocess.Popen(
        command, cwd=BASE_DIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def read_log(log: Path) -> list[tuple[float, float, int, str]]:
    rows = []
    for line in log.read_text().splitlines():
        start, end, status, name = line.split(" ", 3)
        rows.append((float(start), float(end), int(status), name))
    return rows


def percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def summarise(
    engine: str, pool: str, fault: str, rows, retries: float, back_at: float | None, killed
) -> Result:
    failed = [(start, end, status) for start, end, status, _ in rows if status >= 500 or status == 0]
    recover = None
    if back_at is not None:
        recover = max([end - back_at for _, end, _ in failed if end > back_at], default=0.0)
    first_ok = None
    if back_at is not None:
        first_ok = min(
            (end - back_at for _, end, status, _ in rows if status < 400 and end > back_at), default=None
        )
    pages_500: dict[str, int] = {}
    for *_, status, name in rows:
        if status == 500:
            pages_500[name] = pages_500.get(name, 0) + 1
    return Result(
        engine=engine,
        pool=pool,
        fault=fault,
        responses=len(rows),
        errors_500=sum(1 for _, _, status, _ in rows if status == 500),
        errors_503=sum(1 for _, _, status, _ in rows if status == 503),
        other_failures=sum(1 for _, _, status, _ in rows if status not in (200, 201, 500, 503)),
        p99_ms=round(1000 * percentile([end - start for start, end, _, _ in rows], 0.99), 1),
        retries=retries,
        recover_s=None if recover is None else round(recover, 2),
        first_ok_s=None if first_ok is None else round(first_ok, 2),
        killed=killed,
        pages_500=pages_500,
    )


def run_fault(site: Site, server: DedicatedServer, fault: str, args, workdir: Path) -> Result:
    log = workdir / f"requests-{site.config.release}-{site.config.pool}-{fault}.log"
    before = retries_so_far(site.url)
    back_at = None
    killed = None
    if fault == "kill":
        seconds = args.kill_seconds + 2 * args.lead_seconds
        locust = run_locust(site.url, args.users, seconds, log)
        time.sleep(args.lead_seconds)
        killer = Killer(server, args.kill_count, args.kill_every)
        killer.start()
        time.sleep(args.kill_seconds)
        killer.stop()
        killed = killer.killed
    else:
        outage = int(fault.split("-")[1])
        seconds = outage + args.lead_seconds + args.recovery_seconds
        locust = run_locust(site.url, args.users, seconds, log)
        time.sleep(args.lead_seconds)
        server.stop()
        time.sleep(outage)
        server.start()
        back_at = time.time()
    locust.wait(timeout=seconds + 60)
    site.wait_until_ready(timeout=30)
    retries = retries_so_far(site.url) - before
    return summarise(site.config.release, site.config.pool, fault, read_log(log), retries, back_at, killed)


def table(results: list[Result]) -> str:
    lines = [
        "| engine | pool | fault | responses | 500 | 503 | other failures | p99 ms | reads retried "
        "| recover s | first 2xx s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        recover = "" if r.recover_s is None else f"{r.recover_s:.2f}"
        first_ok = "" if r.first_ok_s is None else f"{r.first_ok_s:.2f}"
        engine = {"cursor": "release", "request": "baseline"}[r.engine]
        lines.append(
            f"| {engine} | {r.pool} | {r.fault} | {r.responses} | {r.errors_500} | {r.errors_503} | "
            f"{r.other_failures} | {r.p99_ms:.0f} | {r.retries:.0f} | {recover} | {first_ok} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.faults", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sides", default="release,baseline", help="engines: release, baseline (default both)"
    )
    parser.add_argument("--pools", default="native,dj_db_conn_pool", help="pools (default both)")
    parser.add_argument("--faults", default="kill,outage", help="kill, outage (default both)")
    parser.add_argument("--outages", default="5,15", help="outage lengths in seconds (default 5,15)")
    parser.add_argument("--users", type=int, default=24, help="Locust users (default 24)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker (default 8)")
    parser.add_argument("--pool-size", type=int, default=4, help="connections per worker (default 4)")
    parser.add_argument("--external-latency-ms", type=int, default=50)
    parser.add_argument("--kill-count", type=int, default=8, help="backends terminated each time (default 8)")
    parser.add_argument("--kill-every", type=float, default=2.0, help="seconds between kills (default 2)")
    parser.add_argument("--kill-seconds", type=int, default=30, help="how long the kills go on (default 30)")
    parser.add_argument(
        "--lead-seconds", type=int, default=5, help="load before the fault starts (default 5)"
    )
    parser.add_argument("--recovery-seconds", type=int, default=10, help="load after an outage (default 10)")
    parser.add_argument("--port", type=int, default=8031)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    faults = []
    for fault in args.faults.split(","):
        faults += [f"outage-{n}" for n in args.outages.split(",")] if fault == "outage" else [fault]
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="shop-faults-") as tmp:
        workdir = Path(tmp)
        server = DedicatedServer(workdir / "db")
        say(f"starting a PostgreSQL of this run's own in {workdir / 'db'}")
        server.start()
        try:
            env = {
                **os.environ,
                "DATABASE_URL": server.url(),
                "DJANGO_SETTINGS_MODULE": "project.settings",
                "DJANGO_SECRET_KEY": os.environ.get("DJANGO_SECRET_KEY") or "faults-" + "x" * 60,
            }
            say("migrating and seeding it")
            manage(env, "migrate", "--verbosity", "0")
            manage(env, "seed", "--size", "small")
            for side in args.sides.split(","):
                for pool in args.pools.split(","):
                    config = SiteConfig(
                        release=ENGINES[side],
                        pool=pool,
                        pool_size=args.pool_size,
                        workers=args.workers,
                        threads=args.threads,
                        external_latency_ms=args.external_latency_ms,
                    )
                    extra = {"DATABASE_URL": server.url(), "DJANGO_SECRET_KEY": env["DJANGO_SECRET_KEY"]}
                    with Site(config, args.port, workdir, extra_env=extra) as site:
                        for fault in faults:
                            say(f"{side} on {pool}: {fault}, {args.users} users")
                            results.append(run_fault(site, server, fault, args, workdir))
                            print(table(results[-1:]).splitlines()[-1], flush=True)
        finally:
            server.stop()
    print()
    print(
        f"{args.users} Locust users (MixedUser), gunicorn {args.workers} workers x {args.threads} threads, "
        f"pool {args.pool_size} per worker, external call {args.external_latency_ms} ms"
    )
    print(table(results))
    for r in results:
        if r.pages_500:
            engine = {"cursor": "release", "request": "baseline"}[r.engine]
            print(f"500s, {engine} on {r.pool}, {r.fault}: {r.pages_500}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    print(
        "\nrecover s: from PostgreSQL accepting connections again to the end of the last failed response;"
        "\nfirst 2xx s: to the end of the first successful one."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
