"""The options of `python -m loadtests.compare`, checked before anything starts."""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import socket
from pathlib import Path
from urllib.parse import urlsplit

from loadtests.scenarios import DEFAULT_USERS, SCENARIOS, SERVERS
from loadtests.side import TITLES
from loadtests.site import BASE_DIR

# What `make demo` runs in about ten minutes on a small machine; `--scenarios all` for every one.
DEFAULT_SCENARIOS = ("raw", "orm", "atomic", "async")


def parse_args(argv: list[str] | None, description: str = "") -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.compare", description=description)
    parser.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma-separated, or 'all' ({', '.join(SCENARIOS)}); default %(default)s",
    )
    parser.add_argument("--duration", type=int, default=20, help="seconds of load per side (default 20)")
    parser.add_argument(
        "--users",
        type=int,
        help="concurrent Locust users (default "
        + ", ".join(f"{n} under {server}" for server, n in DEFAULT_USERS.items())
        + ")",
    )
    parser.add_argument(
        "--server",
        choices=SERVERS,
        help="serve every scenario under gunicorn's threads (wsgi) or uvicorn workers (asgi); "
        "default: asgi for async, wsgi for the others",
    )
    parser.add_argument("--pool-size", type=int, default=4, help="connections per worker (default 4)")
    parser.add_argument(
        "--pool-sizes",
        help="a sweep: run stock and release at each of these pool sizes "
        "(e.g. 1,2,4,8,16,32) and report the connections each needs",
    )
    parser.add_argument("--threads", type=int, default=32, help="gunicorn threads per worker (default 32)")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers (default 1)")
    parser.add_argument(
        "--ceiling",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run stock Django with a pool as large as the threads (default on)",
    )
    parser.add_argument(
        "--pgbouncer",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run stock Django behind PgBouncer in transaction mode, with as many "
        "server connections as release's pool (default: when a pgbouncer binary exists)",
    )
    parser.add_argument("--external-latency-ms", type=int, default=50, help="simulated call (default 50)")
    parser.add_argument(
        "--tasks", type=int, default=1200, help="tasks queued per side in the tasks scenario (default 1200)"
    )
    parser.add_argument(
        "--task-latency-ms",
        type=int,
        default=200,
        help="each task's call to the carrier, in the tasks scenario (default 200: tasks call slower "
        "services than pages do)",
    )
    parser.add_argument("--pool", choices=["native", "dj_db_conn_pool"], default="native")
    parser.add_argument("--port", type=int, default=8100, help="where the site listens (default 8100)")
    parser.add_argument("--seed", default="small", help="seed size, or 'none' (default small)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="runs of each side per scenario, the first side alternating; "
        "the report gives medians (default 1)",
    )
    parser.add_argument("--overhead-rounds", type=int, default=20, help="0 skips the per-query benchmark")
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="SIDE=URL",
        help="measure a site that is already running instead of starting one "
        f"(SIDE: {', '.join(TITLES)}); give release and baseline at least; --workers and --threads "
        "then describe the sites",
    )
    parser.add_argument(
        "--prepare-database",
        action="store_true",
        help="with --target: migrate, seed and reset the shop between sides, "
        "on the database at DATABASE_URL (the sites' own)",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="with --target: allow hosts outside 127.0.0.0/8 (a private container network)",
    )
    parser.add_argument("--out", type=Path, help="report folder (default reports/<timestamp>/)")
    args = parser.parse_args(argv)  # fmt: skip

    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if args.scenarios == ["all"]:
        args.scenarios = list(SCENARIOS)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)} or all")
    for name in ("duration", "users", "pool_size", "threads", "workers", "rounds", "tasks"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.external_latency_ms < 0 or args.task_latency_ms < 0:
        parser.error("--external-latency-ms and --task-latency-ms cannot be negative")
    args.pool_sizes = pool_sizes(parser, args.pool_sizes)
    args.targets = targets(parser, args.target, args.allow_remote)
    if args.targets and args.pool_sizes:
        parser.error("--pool-sizes needs sites this run starts; it cannot resize sites given with --target")
    if args.prepare_database and not args.targets:
        parser.error(
            "--prepare-database goes with --target (without it, the run always prepares the database)"
        )
    args.connections_allowed = None  # compare sets it once the database is up: the ASGI ceiling's pool
    if args.out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        args.out = BASE_DIR / "reports" / stamp
    return args


def pool_sizes(parser: argparse.ArgumentParser, text: str | None) -> list[int]:
    if not text:
        return []
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        parser.error(f"--pool-sizes takes whole numbers separated by commas, not {text!r}")
    if not sizes or sizes[0] < 1:
        parser.error("--pool-sizes must all be at least 1")
    return sizes


def targets(parser: argparse.ArgumentParser, given: list[str], allow_remote: bool) -> dict[str, str]:
    """{side: base URL} from SIDE=URL options."""
    found: dict[str, str] = {}
    for option in given:
        side, _, url = option.partition("=")
        side, url = side.strip(), url.strip().rstrip("/")
        if side not in TITLES:
            parser.error(f"--target {option!r}: the side must be one of {', '.join(TITLES)}")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            parser.error(f"--target {option!r}: give a URL such as {side}=http://127.0.0.1:8000")
        if side in found:
            parser.error(f"--target {side} is given twice")
        if not allow_remote and not loopback(parts.hostname):
            parser.error(
                f"--target {option!r}: load goes only to 127.0.0.0/8 unless --allow-remote says "
                "the host is yours (a private container network, say)"
            )
        found[side] = url
    if found and not {"release", "baseline"} <= found.keys():
        parser.error("--target needs at least release=URL and baseline=URL")
    return found


def loopback(host: str) -> bool:
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        return False
    return all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)
