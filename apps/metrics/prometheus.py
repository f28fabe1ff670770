"""The Prometheus series (README, "What is measured"), correct with several gunicorn workers.

With PROMETHEUS_MULTIPROC_DIR set (project/gunicorn.conf.py sets it), each
worker writes its values to files there and /metrics adds them up; gauges use
"livesum" so workers that exited no longer count.
"""

from __future__ import annotations

import glob
import os

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)

LABELS = ("alias", "engine", "pool")

# Seconds: a release checkout is well under a millisecond, a baseline one lasts
# the whole request (tens to hundreds of milliseconds).
TIME_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
CHECKOUT_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 100)

connection_hold = Histogram(
    "db_connection_hold_seconds",
    "One checkout: from acquiring a connection to giving it back.",
    LABELS,
    buckets=TIME_BUCKETS,
)
connection_wait = Histogram(
    "db_connection_wait_seconds",
    "One checkout: time spent waiting for the pool.",
    LABELS,
    buckets=TIME_BUCKETS,
)
request_hold = Histogram(
    "db_request_hold_seconds",
    "One HTTP request that used the database: total time it held a connection.",
    LABELS,
    buckets=TIME_BUCKETS,
)
request_checkouts = Histogram(
    "db_request_checkouts",
    "One HTTP request that used the database: how many checkouts it made.",
    LABELS,
    buckets=CHECKOUT_BUCKETS,
)
checkouts = Counter("db_connection_checkouts", "Checkouts.", LABELS)
pool_timeouts = Counter("db_pool_timeouts", "Requests that gave up waiting for a connection.", LABELS)
requests_ended_holding = Counter(
    "db_requests_ended_holding",
    "Requests that ended still holding a connection outside a transaction, "
    "because a cursor opened on it was never closed.",
    LABELS,
)
connections_pinned = Counter(
    "db_connections_pinned",
    "Checkouts a release engine kept until the request's end because of session-level SQL "
    "(reason: set, advisory_lock, temp, listen, prepare, cursor_with_hold, load), or kept for "
    "a hold_connection() block (reason: hold_connection).",
    (*LABELS, "reason"),
)
query_retries = Counter(
    "db_query_retries",
    "ORM read retries on a fresh connection after a connection-level error.",
    LABELS,
)
# Per view: what a request of each view held, and how much of that it used (apps.metrics.views).
VIEW_LABELS = (*LABELS, "view")
view_requests = Counter(
    "db_view_requests",
    "HTTP requests that used a database connection, by view (Django's view name; "
    "'(unresolved)' for paths no URL pattern matched).",
    VIEW_LABELS,
)
view_hold_seconds = Counter(
    "db_view_hold_seconds",
    "Connection-seconds the view's requests held: the rate is the connections they keep in use.",
    VIEW_LABELS,
)
view_database_seconds = Counter(
    "db_view_database_seconds",
    "Connection-seconds the view's statements ran in the database (execute and fetch).",
    VIEW_LABELS,
)
view_kept_seconds = Counter(
    "db_view_kept_seconds",
    "Connection-seconds a release engine keeps for the view: statements outside a transaction, "
    "whole transactions and hold_connection() blocks, pinned and leaked checkouts.",
    VIEW_LABELS,
)
http_requests = Counter(
    "http_requests",
    "HTTP requests answered, by status class (2xx, 4xx, 5xx...), counted when the response leaves.",
    ("status",),
)
_http_requests_by_class: dict[int, Counter] = {}


def http_requests_by_class(status_code: int) -> Counter:
    """The http_requests_total child for a status code's class ("2xx"...), looked up once."""
    klass = status_code // 100
    child = _http_requests_by_class.get(klass)
    if child is None:
        child = _http_requests_by_class.setdefault(klass, http_requests.labels(f"{klass}xx"))
    return child


checked_out = Gauge(
    "db_connections_checked_out",
    "Connections out of the pool now: each worker's pools, as of its last request or scrape.",
    LABELS,
    multiprocess_mode="livesum",
)  # fmt: skip
pool_connections = Gauge(
    "db_pool_connections",
    "Connections the pool holds, by state (idle, in_use), as of each worker's last request.",
    (*LABELS, "state"),
    multiprocess_mode="livesum",
)
pool_max_connections = Gauge(
    "db_pool_max_connections", "The pools' maximum size, summed over workers.", LABELS,
    multiprocess_mode="livesum",
)  # fmt: skip


# A values file starts with the 4-byte length of what it holds (prometheus_client's mmap_dict).
_HEADER_BYTES = 4


class MultiProcessCollector(multiprocess.MultiProcessCollector):
    """prometheus_client's collector, minus the files a worker has created but not yet sized.

    A worker creates its values file empty and sizes it a moment later; a scrape
    in between made the library fail on the empty file (struct.error), and every
    series with it (prometheus/client_python#1199). A worker killed in that moment
    leaves the empty file for good. An empty file holds no values, so it is skipped.
    """

    def __init__(self, registry: CollectorRegistry, path: str) -> None:
        super().__init__(registry, path)
        self.directory = path

    def collect(self):
        return self.merge(self.readable_files(), accumulate=True)

    def readable_files(self) -> list[str]:
        found = []
        for path in glob.glob(os.path.join(self.directory, "*.db")):
            try:
                if os.path.getsize(path) >= _HEADER_BYTES:
                    found.append(path)
            except FileNotFoundError:  # a dead worker's live gauges, just removed
                continue
        return found


def registry() -> CollectorRegistry:
    """The registry to expose: every worker's values in multiprocess mode, else this process's."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return REGISTRY
    collecting = CollectorRegistry()
    MultiProcessCollector(collecting, directory)
    return collecting
