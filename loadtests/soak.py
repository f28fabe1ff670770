"""A soak: the shop under load for half an hour, with faults, watching that nothing drifts.

    python -m loadtests.soak                          # release on the native pool, 30 minutes
    python -m loadtests.soak --pool dj_db_conn_pool --minutes 0.5

Two sites on a PostgreSQL of the run's own (an embedded server in a temporary folder):
the shop under gunicorn's threads (WSGI) with Locust's MixedUser, and under uvicorn
workers (ASGI) with its AsyncUser. Every --kill-every-seconds every server session of
the shop's database is terminated; twice, PostgreSQL stops for --restart-seconds and
starts again: once while the workers warm up, so that memory is measured from after
every fault has been met once, and once in the middle of what is measured. Every
--sample-seconds it records each worker's RSS and open file descriptors, what that
memory is made of (Python's blocks and arenas, malloc's in use and free, the threads'
stacks: loadtests/heap.py), the server's connections (pg_stat_activity), each site's
checked-out connections, hold and wait p95 over the interval (/metrics) and the 5xx
answered so far.

The report (report.json, report.md, soak.png) goes to reports/soak/<engine>-<pool>/,
with a verdict per line: memory growth from minute 5 to the end under 5%, descriptors
and server connections at the end within the pool's size of the start, no 500; every
5xx with its cause from the site's log. The heap's figures are shown from minute 5 to
the end too, without a rule: they say whether memory that grew is live or kept by malloc.
Run nothing else on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import psycopg

from apps.metrics.prediction import since
from loadtests import heap, measure
from loadtests.faults import ENGINES, DedicatedServer, manage, run_locust, say, terminate_backends
from loadtests.machine import machine
from loadtests.side import ms
from loadtests.site import BASE_DIR, Site, SiteConfig

# The lines a soak samples, in the order of the chart's panels: (key, title, unit).
LINES = [
    ("rss_mb", "RSS of each worker", "MB"),
    ("rss_file_mb", "of it, file-backed and shared pages: code, the metrics' mmap'd files", "MB"),
    *heap.LINES,
    ("fds", "open file descriptors of each worker", "descriptors"),
    ("server_connections", "server connections (pg_stat_activity, the shop's database)", "connections"),
    ("checked_out", "connections checked out (db_connections_checked_out)", "connections"),
    ("hold_p95_ms", "hold per checkout, p95 over the interval", "ms"),
    ("view_hold_ms", "connection held per request, by view, mean over the interval (log scale)", "ms"),
    ("wait_p95_ms", "wait for the pool, p95 over the interval", "ms"),
    ("errors_5xx", "5xx answered so far (Locust)", "responses"),
]
MEMORY_GROWTH_LIMIT = 0.05
# Lines whose subjects differ by orders of magnitude (an export holds for seconds, a page for ms).
LOG_SCALE = {"view_hold_ms"}
# The sites' gunicorn settings: the project's, with each worker reporting its heap (loadtests/heap.py).
HEAP_CONFIG = BASE_DIR / "loadtests" / "gunicorn_heap.conf.py"
# Memory is measured from here on: the first minutes are the workers warming up.
WARM_UP_SECONDS = 300
# A 503 that ends this long after a fault began (or after the server is back) is the fault's.
FAULT_GRACE_SECONDS = 15.0
# Samples averaged (median) for a line's value at a moment: one reading may catch a spike.
READINGS = 3


# Sampled data ---------------------------------------------------------------------------------------


class Series(dict):
    """line -> subject (a worker, a site) -> [[seconds since the start, value], ...]."""

    def add(self, line: str, subject: str, t: float, value: float | None) -> None:
        if value is not None:
            self.setdefault(line, {}).setdefault(subject, []).append([round(t, 1), round(value, 3)])


class Monitor:
    """The soak's own connection to the shop's database: counts the others and terminates them.

    Shared by the sampler and the faults, under a lock; while the server is down it answers
    None, and it connects again when it is back.
    """

    def __init__(self, server: DedicatedServer) -> None:
        self.server = server
        self.lock = threading.Lock()
        self.conn: psycopg.Connection | None = None

    def run(self, action):
        with self.lock:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = self.server.connect()
                return action(self.conn)
            except psycopg.Error:
                self.close()
                return None

    def connections(self) -> int | None:
        """The shop's server sessions, this one apart."""
        sql = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'shop' "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        return self.run(lambda conn: conn.execute(sql).fetchone()[0])

    def terminate_all(self) -> int | None:
        return self.run(terminate_backends)

    def delete_orders(self, after_id: int, older_than_seconds: float) -> int | None:
        """Delete the orders after `after_id` placed more than `older_than_seconds` ago; how many."""
        sql = (
            "WITH old AS (SELECT id FROM orders_order WHERE id > %(after)s "
            "             AND created_at < now() - make_interval(secs => %(age)s)), "
            "lines AS (DELETE FROM orders_orderline WHERE order_id IN (SELECT id FROM old)), "
            "confirmations AS (DELETE FROM orders_confirmation WHERE order_id IN (SELECT id FROM old)) "
            "DELETE FROM orders_order WHERE id IN (SELECT id FROM old)"
        )
        params = {"after": after_id, "age": older_than_seconds}
        return self.run(lambda conn: conn.execute(sql, params).rowcount)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class RequestLog:
    """A Locust request log (loadtests/faultlog.py) read as it grows: requests, and the failed ones kept."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.requests = 0
        self.failed: list[list] = []  # [start, end, status, name]: 5xx, and 0 for no answer

    def read_new(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next read
        self.offset += len(complete)
        for line in complete.decode().splitlines():
            start, end, status, name = line.split(" ", 3)
            self.requests += 1
            if int(status) >= 500 or int(status) == 0:
                self.failed.append([float(start), float(end), int(status), name])

    def errors_5xx(self) -> int:
        return sum(1 for row in self.failed if row[2] >= 500)


def worker_readings(master_pid: int) -> dict[int, tuple[float, float, int]]:
    """pid -> (RSS, of it backed by files, in MB; open descriptors) of each gunicorn worker."""
    readings = {}
    try:
        workers = psutil.Process(master_pid).children()
    except psutil.Error:
        return readings
    for worker in workers:
        try:
            memory = worker.memory_info()
            readings[worker.pid] = (memory.rss / 2**20, memory.shared / 2**20, worker.num_fds())
        except psutil.Error:  # exited between the listing and the reading
            continue
    return readings


class Watched:
    """One site under load: its server, its Locust, its request log and its last /metrics."""

    def __init__(self, name: str, site: Site, log: RequestLog, heap_dir: Path) -> None:
        self.name, self.site, self.log, self.heap_dir = name, site, log, heap_dir
        self.last_scrape: measure.Scrape | None = None
        self.last_views: dict = {}
        self.locust: subprocess.Popen | None = None

    def sample(self, t: float, series: Series) -> None:
        reports = heap.read_reports(self.heap_dir)
        for pid, (rss, rss_file, fds) in worker_readings(self.site.process.pid).items():
            series.add("rss_mb", f"{self.name}/{pid}", t, rss)
            series.add("rss_file_mb", f"{self.name}/{pid}", t, rss_file)
            series.add("fds", f"{self.name}/{pid}", t, fds)
            for line, value in reports.get(pid, {}).items():
                series.add(line, f"{self.name}/{pid}", t, value)
        try:
            scrape = measure.fetch(self.site.url, timeout=5)
        except OSError:
            scrape = None
        if scrape is not None:
            series.add("checked_out", self.name, t, scrape.total("db_connections_checked_out"))
            if self.last_scrape is not None:
                window = measure.Window(self.last_scrape, scrape)
                series.add(
                    "hold_p95_ms", self.name, t, ms(window.quantile("db_connection_hold_seconds", 0.95))
                )
                series.add(
                    "wait_p95_ms", self.name, t, ms(window.quantile("db_connection_wait_seconds", 0.95))
                )
            views = scrape.views()
            for view, totals in since(views, self.last_views).items():
                if totals.requests and self.last_views:
                    series.add("view_hold_ms", f"{self.name} {view}", t, 1000 * totals.hold / totals.requests)
            self.last_scrape, self.last_views = scrape, views
        self.log.read_new()
        series.add("errors_5xx", self.name, t, self.log.errors_5xx())


class Sampler(threading.Thread):
    """Reads every line every `every` seconds until stopped, the server down or not."""

    def __init__(self, sites: list[Watched], monitor: Monitor, every: float, started: float) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.sites, self.monitor, self.every, self.started = sites, monitor, every, started
        self.series = Series()
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.every):
            self.sample()

    def sample(self) -> None:
        t = time.monotonic() - self.started
        self.series.add("server_connections", "shop", t, self.monitor.connections())
        for site in self.sites:
            site.sample(t, self.series)

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)
        self.sample()  # the last reading, after the load


# Verdicts --------------------------------------------------------------------------------------------


@dataclass
class Verdict:
    line: str
    subject: str
    start: float | None
    end: float | None
    passed: bool | None  # None: figures only, no rule
    rule: str
    note: str = ""


def median_of(points: list[list[float]]) -> float | None:
    return statistics.median(v for _, v in points) if points else None


def value_from(points: list[list[float]], t: float) -> float | None:
    """The line's value from `t` on: the median of the first few readings at or after it."""
    return median_of([p for p in points if p[0] >= t][:READINGS])


def value_at_end(points: list[list[float]]) -> float | None:
    return median_of(points[-READINGS:])


def memory_from(duration: float) -> tuple[float, str]:
    """Where memory growth is measured from, and how the report says it."""
    if duration >= 2 * WARM_UP_SECONDS:
        return WARM_UP_SECONDS, "from minute 5 to the end"
    return (
        duration / 2,
        f"from the middle ({duration / 2:.0f} s; the run is shorter than 10 minutes) to the end",
    )


def memory_verdicts(
    by_subject: dict[str, list], duration: float, line: str = "rss_mb", judged: bool = True
) -> list[Verdict]:
    """Growth of each worker's `line` from minute 5 to the end: judged for RSS, figures for the rest."""
    start_t, span = memory_from(duration)
    last_reading = max((points[-1][0] for points in by_subject.values()), default=0)
    rule = f"grows < {MEMORY_GROWTH_LIMIT:.0%} {span}" if judged else f"figures only, {span}"
    verdicts = []
    for subject, points in sorted(by_subject.items()):
        start, end = value_from(points, start_t), value_at_end(points)
        if start is None or points[0][0] > start_t or points[-1][0] < last_reading:
            # A worker that was not there from the start to the end: gunicorn replaced it.
            passed = False if judged else None
            verdicts.append(Verdict(line, subject, start, end, passed, rule, "worker not there throughout"))
            continue
        growth = (end - start) / start if start else 0.0
        passed = growth < MEMORY_GROWTH_LIMIT if judged else None
        verdicts.append(Verdict(line, subject, start, end, passed, rule, f"{growth:+.1%}"))
    return verdicts


def level_verdicts(line: str, by_subject: dict[str, list], tolerance: float) -> list[Verdict]:
    """The line at the end within `tolerance` of where it started, per subject."""
    verdicts = []
    for subject, points in sorted(by_subject.items()):
        start, end = median_of(points[:READINGS]), value_at_end(points)
        passed = start is not None and end is not None and abs(end - start) <= tolerance
        verdicts.append(
            Verdict(
                line,
                subject,
                start,
                end,
                passed,
                f"end within ± {tolerance:g} of the start",
                "" if start is None or end is None else f"{end - start:+g}",
            )  # fmt: skip
        )
    return verdicts


def idle_verdicts(by_subject: dict[str, list]) -> list[Verdict]:
    """Connections checked out: none once the load has stopped (the last reading comes after it)."""
    return [
        Verdict(
            "checked_out",
            subject,
            median_of(points[:READINGS]),
            points[-1][1],
            points[-1][1] == 0,
            "0 once the load has stopped",
        )  # fmt: skip
        for subject, points in sorted(by_subject.items())
    ]


def figure_verdicts(line: str, by_subject: dict[str, list], duration: float) -> list[Verdict]:
    """From minute 5 (the pool full, the data at its size) to the end, no rule: to read on the chart."""
    start_t, span = memory_from(duration)
    rule = f"figures only, {span}"
    return [
        Verdict(line, subject, value_from(points, start_t), value_at_end(points), None, rule)
        for subject, points in sorted(by_subject.items())
    ]


def under_load(by_subject: dict[str, list], duration: float) -> dict[str, list]:
    """The readings taken while Locust ran: the last one comes after it, without the clients' sockets."""
    return {subject: [p for p in points if p[0] <= duration] for subject, points in by_subject.items()}


def verdicts(series: dict, duration: float, pool_size: int, errors: dict) -> list[Verdict]:
    found = memory_verdicts(series.get("rss_mb", {}), duration)
    for line in ["rss_file_mb", *(key for key, _, _ in heap.LINES)]:
        found += memory_verdicts(series.get(line, {}), duration, line, judged=False)
    for line in ("fds", "server_connections"):
        found += level_verdicts(line, under_load(series.get(line, {}), duration), pool_size)
    found += idle_verdicts(series.get("checked_out", {}))
    for line in ("hold_p95_ms", "wait_p95_ms", "view_hold_ms"):
        found += figure_verdicts(line, series.get(line, {}), duration)
    answered, logged = errors["500"]["count"], errors["500"]["logged"]
    causes = "; ".join(f"{e['site']} {e['path'] or e['cause']}: {e['error']}" for e in logged[:3])
    rule = "none answered, no error logged"
    found.append(Verdict("500", "all sites", None, answered, answered == 0 and not logged, rule, causes))
    outside = errors["503"]["outside_faults"]
    found.append(
        Verdict("503", "all sites", None, errors["503"]["count"], None, "expected during the faults",
                f"{outside} outside the faults" if outside else "all during the faults")
    )  # fmt: skip
    return found


# 5xx and their causes ---------------------------------------------------------------------------------

# A record of the site's log (project/settings.py's format, or gunicorn's own), and a 503's line.
DJANGO_RECORD = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ (?P<level>[A-Z]+) (?P<logger>\S+) (?P<message>.*)$")
GUNICORN_RECORD = re.compile(r"^\[[^\]]+\] \[\d+\] \[(?P<level>[A-Z]+)\] (?P<message>.*)$")
UNAVAILABLE = re.compile(r"^503 for (?P<method>\S+) (?P<path>\S+): (?P<cause>[^(]+?) \((?P<error>.*)\)$")
INTERNAL = re.compile(r"^Internal Server Error: (?P<path>\S+)")


@dataclass
class LoggedError:
    status: int | None  # 503, 500, or None for another error logged
    path: str
    cause: str
    error: str  # the error's line: a 503's message, the last line of a 500's traceback


def records(log: str) -> list[tuple[str, str, list[str]]]:
    """(level, message, the lines that follow it: a traceback) of every record in a site's log."""
    found: list[tuple[str, str, list[str]]] = []
    for line in log.splitlines():
        record = DJANGO_RECORD.match(line) or GUNICORN_RECORD.match(line)
        if record:
            found.append((record["level"], record["message"], []))
        elif found:
            found[-1][2].append(line)
    return found


def logged_errors(log: str) -> list[LoggedError]:
    """The 503s the site logged (with their cause) and every error it logged (a 500's traceback)."""
    errors = []
    for level, message, following in records(log):
        unavailable = UNAVAILABLE.match(message)
        if unavailable:
            errors.append(LoggedError(503, unavailable["path"], unavailable["cause"], unavailable["error"]))
        elif level in ("ERROR", "CRITICAL"):
            internal = INTERNAL.match(message)
            last = next((line.strip() for line in reversed(following) if line.strip()), message)
            errors.append(LoggedError(500 if internal else None, internal["path"] if internal else "",
                                      message.split(":")[0], last))  # fmt: skip
    return errors


def during_faults(end: float, faults: list[dict]) -> bool:
    """Whether a request that ended at `end` (epoch seconds) ended in a fault's window."""
    return any(f["at"] <= end <= f.get("back_at", f["at"]) + FAULT_GRACE_SECONDS for f in faults)


def count_by(rows, key) -> dict:
    counts: dict = {}
    for row in rows:
        counts[key(row)] = counts.get(key(row), 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def error_summary(failed: dict[str, list], logs: dict[str, str], faults: list[dict]) -> dict:
    """Every 5xx (and every request without an answer) by site, page and cause.

    `failed`: site -> Locust's failed rows [start, end, status, name]; `logs`: site -> its
    log; `faults`: {"at", "back_at"} in epoch seconds. 500s are listed one by one with the
    error the site logged; 503s are grouped by cause, and counted in and outside the faults.
    """
    rows = [(site, *row) for site, site_rows in failed.items() for row in site_rows]
    logged = {site: logged_errors(log) for site, log in logs.items()}
    unavailable = [(site, e) for site, errors in logged.items() for e in errors if e.status == 503]
    rows_503 = [row for row in rows if row[3] == 503]
    return {
        "500": {
            "count": sum(1 for row in rows if row[3] == 500),
            "by_page": count_by((r for r in rows if r[3] == 500), lambda r: f"{r[0]} {r[4]}"),
            "logged": [
                {"site": site, "path": e.path, "cause": e.cause, "error": e.error}
                for site, errors in logged.items()
                for e in errors
                if e.status != 503
            ],
        },
        "503": {
            "count": len(rows_503),
            "outside_faults": sum(1 for row in rows_503 if not during_faults(row[2], faults)),
            "by_page": count_by(rows_503, lambda r: f"{r[0]} {r[4]}"),
            "by_cause": count_by(unavailable, lambda item: f"{item[0]}: {item[1].cause}"),
            "example_error": {f"{site}: {e.cause}": e.error for site, e in reversed(unavailable)},
        },
        "other_5xx": count_by(
            (r for r in rows if r[3] > 500 and r[3] != 503), lambda r: f"{r[0]} {r[3]} {r[4]}"
        ),
        "no_answer": count_by((r for r in rows if r[3] == 0), lambda r: f"{r[0]} {r[4]}"),
    }


# The run ------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """When the faults come, in seconds from the start."""

    duration: float
    kill_every: float
    restarts: list[float]
    restart_seconds: float

    def events(self) -> list[tuple[float, str]]:
        kills = []
        if self.kill_every > 0:
            n = 1
            while n * self.kill_every < self.duration:
                kills.append((n * self.kill_every, "kill"))
                n += 1
        stops = [(t, "restart") for t in self.restarts] if self.restart_seconds else []
        return sorted(kills + stops)


@dataclass
class Faults:
    """What the run did to the database, in seconds from the start and in epoch seconds."""

    done: list[dict] = field(default_factory=list)

    def kill(self, t: float, monitor: Monitor) -> None:
        at = time.time()
        terminated = monitor.terminate_all()
        self.done.append({"kind": "kill", "t": round(t, 1), "at": at, "terminated": terminated})
        say(f"  {t:.0f} s: terminated every server session of the shop ({terminated} of them)")

    def restart(self, t: float, server: DedicatedServer, monitor: Monitor, seconds: float) -> None:
        at = time.time()
        say(f"  {t:.0f} s: stopping PostgreSQL for {seconds:g} s")
        server.stop()  # the monitor's connection fails with it, and connects again once it is back
        time.sleep(seconds)
        server.start()
        back = time.time()
        self.done.append({"kind": "restart", "t": round(t, 1), "at": at, "back_at": back,
                          "down_s": round(back - at, 1)})  # fmt: skip
        say(f"  PostgreSQL back after {back - at:.1f} s")


@dataclass
class OrderTrim:
    """Keeps the shop's data the same size: the orders the run placed go once `keep_seconds` old.

    Every order placed would otherwise stay, and the views that read them all (the sales
    report, the export) would read more each minute: their holds, and the CPU PostgreSQL takes
    from everything else, would grow with the data instead of showing the engine.
    """

    after_id: int  # the last order seeded: those stay
    keep_seconds: float
    deleted: int = 0

    def __call__(self, monitor: Monitor) -> None:
        if self.keep_seconds <= 0:
            return
        deleted = monitor.delete_orders(self.after_id, self.keep_seconds)
        if deleted is None:
            say("  old orders not deleted this time: the database did not answer")
        self.deleted += deleted or 0


def wait_until(started: float, t: float) -> None:
    time.sleep(max(0.0, started + t - time.monotonic()))


def progress(series: Series, t: float, duration: float) -> str:
    def last(line: str) -> str:
        values = [points[-1][1] for points in series.get(line, {}).values() if points]
        return "/".join(f"{v:.0f}" for v in values) or "–"

    return (
        f"  minute {t / 60:.1f} of {duration / 60:g}: RSS {last('rss_mb')} MB, descriptors {last('fds')}, "
        f"server connections {last('server_connections')}, checked out {last('checked_out')}, "
        f"5xx {last('errors_5xx')}"
    )


def run_load(
    args, server: DedicatedServer, sites: list[Watched], started: float, trim: OrderTrim
) -> tuple[Series, Faults]:
    """The soak itself: Locust on both sites, the sampler, the faults on schedule, old orders trimmed."""
    duration = args.minutes * 60
    monitor = Monitor(server)
    sampler = Sampler(sites, monitor, args.sample_seconds, started)
    faults = Faults()
    plan = Plan(duration, args.kill_every_seconds, restarts(args, duration), args.restart_seconds)
    sampler.start()
    every = min(60.0, max(args.sample_seconds, duration / 6))
    next_progress = every
    for t, kind in [*plan.events(), (duration, "end")]:
        while next_progress < t:
            wait_until(started, next_progress)
            trim(monitor)
            say(progress(sampler.series, next_progress, duration))
            next_progress += every
        wait_until(started, t)
        if kind == "kill":
            faults.kill(time.monotonic() - started, monitor)
        elif kind == "restart":
            faults.restart(time.monotonic() - started, server, monitor, args.restart_seconds)
    for site in sites:
        site.locust.wait(timeout=60)
    sampler.stop()
    monitor.close()
    return sampler.series, faults


def restarts(args, duration: float) -> list[float]:
    """When PostgreSQL stops: as asked, or once in the warm-up and once in the middle of the rest.

    A worker's first restart leaves it holding the most memory that answering one takes (freed
    memory its allocators keep); met in the warm-up, that is not counted as growth, and the
    second restart shows whether another one adds to it.
    """
    if not args.restart_seconds:
        return []
    if args.restart_at_seconds is not None:
        return sorted(args.restart_at_seconds)
    measured_from, _ = memory_from(duration)
    return [0.6 * measured_from, (measured_from + duration) / 2]


def prepare_database(server: DedicatedServer, secret: str) -> int:
    """Migrate and seed the run's database; the id of the last order seeded."""
    env = {**os.environ, "DATABASE_URL": server.url(), "DJANGO_SETTINGS_MODULE": "project.settings",
           "DJANGO_SECRET_KEY": secret}  # fmt: skip
    manage(env, "migrate", "--verbosity", "0")
    manage(env, "seed", "--size", "small")
    # Orders take stock: enough for the whole run, so that none is refused for want of it.
    with server.connect() as conn:
        conn.execute("UPDATE catalog_product SET stock = 1000000")
        return conn.execute("SELECT coalesce(max(id), 0) FROM orders_order").fetchone()[0]


def soak(args, workdir: Path) -> dict:
    server = DedicatedServer(workdir / "db")
    say(f"starting a PostgreSQL of this run's own in {workdir / 'db'}")
    server.start()
    try:
        secret = os.environ.get("DJANGO_SECRET_KEY") or "soak-" + "x" * 60
        say("migrating and seeding it")
        trim = OrderTrim(prepare_database(server, secret), args.keep_orders_seconds)
        extra = {"DATABASE_URL": server.url(), "DJANGO_SECRET_KEY": secret,
                 "HEAP_REPORT_SECONDS": str(args.sample_seconds)}  # fmt: skip
        heap_dirs = {kind: workdir / f"heap-{kind}" for kind in ("wsgi", "asgi")}
        configs = {
            kind: SiteConfig(release=ENGINES[args.engine], pool=args.pool, pool_size=args.pool_size,
                             workers=args.workers, threads=args.threads,
                             external_latency_ms=args.external_latency_ms, server=kind)
            for kind in ("wsgi", "asgi")
        }  # fmt: skip
        sites_by_kind = {
            kind: Site(configs[kind], args.port + i, workdir, name=kind, gunicorn_config=HEAP_CONFIG,
                       extra_env={**extra, "HEAP_REPORT_DIR": str(heap_dirs[kind])})
            for i, kind in enumerate(("wsgi", "asgi"))
        }  # fmt: skip
        with sites_by_kind["wsgi"] as wsgi, sites_by_kind["asgi"] as asgi:
            sites = [Watched(kind, site, RequestLog(workdir / f"requests-{kind}.log"), heap_dirs[kind])
                     for kind, site in sites_by_kind.items()]  # fmt: skip
            duration = args.minutes * 60
            say(
                f"{args.engine} on {args.pool} for {args.minutes:g} min: {args.wsgi_users} MixedUser on "
                f"{wsgi.url} (WSGI), {args.asgi_users} AsyncUser on {asgi.url} (ASGI), "
                f"workers per site: {args.workers}, pool {args.pool_size} per worker"
            )
            started = time.monotonic()
            for site, users, user in (
                (sites[0], args.wsgi_users, "MixedUser"),
                (sites[1], args.asgi_users, "AsyncUser"),
            ):
                site.locust = run_locust(site.site.url, users, int(round(duration)), site.log.path, user)
            series, faults = run_load(args, server, sites, started, trim)
            # Read before the sites stop: gunicorn's own lines about stopping are not the run's errors.
            logs = {site.name: site.site.log() for site in sites}
        args.out.mkdir(parents=True, exist_ok=True)
        for name, log in logs.items():  # the errors' full tracebacks, beside the report
            (args.out / f"site-{name}.log").write_text(log)
        failed = {site.name: site.log.failed for site in sites}
        requests = {site.name: site.log.requests for site in sites}
    finally:
        server.stop()
    return build_report(args, series, faults, logs, failed, requests, trim.deleted)


def build_report(
    args, series: Series, faults: Faults, logs: dict, failed: dict, requests: dict, orders_deleted: int = 0
) -> dict:
    duration = args.minutes * 60
    errors = error_summary(failed, logs, faults.done)
    found = verdicts(series, duration, args.pool_size, errors)
    return {
        "command": "python -m loadtests.soak " + " ".join(args.argv),
        "machine": args.machine,
        "engine": args.engine,
        "pool": args.pool,
        "minutes": args.minutes,
        "pool_size": args.pool_size,
        "workers": args.workers,
        "threads": args.threads,
        "users": {"wsgi (MixedUser)": args.wsgi_users, "asgi (AsyncUser)": args.asgi_users},
        "requests": requests,
        "orders_kept_seconds": args.keep_orders_seconds,
        "orders_deleted": orders_deleted,
        "faults": faults.done,
        "errors": errors,
        "verdicts": [asdict(v) for v in found],
        "passed": all(v.passed is not False for v in found),
        "samples": series,
    }


# The report -----------------------------------------------------------------------------------------


def figure(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def verdict_table(found: list[dict]) -> str:
    lines = ["| line | subject | start | end | change | rule | verdict |", "|---|---|---:|---:|---:|---|---|"]
    for v in found:
        verdict = {True: "pass", False: "**FAIL**", None: "–"}[v["passed"]]
        lines.append(f"| {v['line']} | {v['subject']} | {figure(v['start'])} | {figure(v['end'])} | "
                     f"{v['note']} | {v['rule']} | {verdict} |")  # fmt: skip
    return "\n".join(lines)


def error_lines(errors: dict) -> list[str]:
    lines = [f"- 500: {errors['500']['count']}"]
    lines += [f"  - {page}: {n}" for page, n in errors["500"]["by_page"].items()]
    lines += [
        f"  - logged by {e['site']}: {e['path'] or e['cause']}: {e['error']}" for e in errors["500"]["logged"]
    ]
    lines.append(f"- 503: {errors['503']['count']} ({errors['503']['outside_faults']} outside the faults)")
    lines += [f"  - {page}: {n}" for page, n in errors["503"]["by_page"].items()]
    lines += [f"  - cause {cause}: {n} logged, e.g. {errors['503']['example_error'].get(cause, '')}"
              for cause, n in errors["503"]["by_cause"].items()]  # fmt: skip
    lines += [f"- {what}: {n}" for what, n in errors["other_5xx"].items()]
    lines += [f"- no answer, {page}: {n}" for page, n in errors["no_answer"].items()]
    return lines


def kept_orders(report: dict) -> str:
    if not report["orders_kept_seconds"]:
        return "Data: every order placed kept (it grows over the run)."
    return (
        f"Data: orders placed deleted every minute once {report['orders_kept_seconds']:g} s old, "
        f"{report['orders_deleted']} in all."
    )


def markdown(report: dict, chart: str) -> str:
    m = report["machine"]
    faults = ", ".join(
        f"{f['t']:.0f} s kill ({f['terminated']})"
        if f["kind"] == "kill"
        else f"{f['t']:.0f} s restart ({f['down_s']} s down)"
        for f in report["faults"]
    )
    return "\n".join([
        f"# Soak: {report['engine']} on {report['pool']}, {report['minutes']:g} minutes",
        "",
        f"`{report['command']}` on {m['cpu']} ({m['cores']} cores), Python {m['python']}, "
        f"Django {m['django']}, commit {m['commit']}.",
        f"Load: {', '.join(f'{n} {who}' for who, n in report['users'].items())}; "
        f"workers per site: {report['workers']}, pool {report['pool_size']} per worker; requests: "
        f"{', '.join(f'{site} {n}' for site, n in report['requests'].items())}.",
        f"Faults: {faults or 'none'}.",
        kept_orders(report),
        "",
        f"**{'Every verdict passed.' if report['passed'] else 'Some verdicts FAILED.'}**",
        "",
        verdict_table(report["verdicts"]),
        "",
        "## 5xx and their causes",
        "",
        *error_lines(report["errors"]),
        "",
        f"![Every line over time, the faults marked]({chart})",
        "",
    ])  # fmt: skip


def write_report(report: dict, out: Path) -> Path:
    from loadtests.charts import soak_chart

    out.mkdir(parents=True, exist_ok=True)
    chart = soak_chart(report["samples"], LINES, report["faults"], out, log_scale=LOG_SCALE)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(markdown(report, chart))
    return out / "report.md"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30, help="how long the load lasts (default 30)")
    parser.add_argument("--pool", choices=["native", "dj_db_conn_pool"], default="native")
    parser.add_argument("--engine", choices=list(ENGINES), default="release",
                        help="release (default), or baseline for reference")  # fmt: skip
    parser.add_argument("--sample-seconds", type=float, default=5, help="between readings (default 5)")
    parser.add_argument("--kill-every-seconds", type=float, default=240,
                        help="terminate every server session this often (default 240; 0: never)")  # fmt: skip
    parser.add_argument("--restart-seconds", type=float, default=5,
                        help="PostgreSQL stopped this long each time (default 5; 0: no restart)")  # fmt: skip
    parser.add_argument("--restart-at-seconds", type=float, nargs="+", metavar="SECONDS",
                        help="when it stops (default: at minute 3, in the warm-up, and halfway "
                             "through the rest)")  # fmt: skip
    parser.add_argument("--wsgi-users", type=int, default=32, help="MixedUser on the WSGI site (default 32)")
    parser.add_argument("--asgi-users", type=int, default=64, help="AsyncUser on the ASGI site (default 64)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per site (default 2)")
    parser.add_argument("--threads", type=int, default=8, help="threads per WSGI worker (default 8)")
    parser.add_argument("--pool-size", type=int, default=4, help="connections per worker (default 4)")
    parser.add_argument("--external-latency-ms", type=int, default=50)
    parser.add_argument("--keep-orders-seconds", type=float, default=120,
                        help="orders the run placed are deleted once this old, at each progress line "
                             "(every minute), so that the data stays the same size (default 120; 0: keep "
                             "them all)")  # fmt: skip
    parser.add_argument("--port", type=int, default=8041, help="the WSGI site's; the ASGI site's is the next")
    parser.add_argument("--out", type=Path, help="default reports/soak/<engine>-<pool>/")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    duration = args.minutes * 60
    if args.restart_at_seconds and not all(0 < t < duration for t in args.restart_at_seconds):
        parser.error(f"--restart-at-seconds: each moment must fall inside the run (0 to {duration:g} s)")
    args.machine = machine()  # as the run starts: the commit may move on while it runs
    args.out = args.out or BASE_DIR / "reports" / "soak" / f"{args.engine}-{args.pool}"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="shop-soak-") as tmp:
        report = soak(args, Path(tmp))
    path = write_report(report, args.out)
    say(f"report: {path} (and report.json, soak.png beside it)")
    print(verdict_table(report["verdicts"]))
    print("\n".join(error_lines(report["errors"])))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
