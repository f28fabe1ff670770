"""Turn the engines' checkouts into Prometheus series and per-request usage."""

from __future__ import annotations

import threading
from time import monotonic

from django.core.signals import request_finished, request_started
from django.db import connections
from django.db.backends.base.base import NO_DB_ALIAS

from apps.metrics import prometheus
from apps.metrics.requests import AliasUsage, Labels, end_request_usage, forget_thread_usage, request_usage
from backends import instrumentation


def labels_of(wrapper) -> Labels | None:
    if wrapper.alias == NO_DB_ALIAS:  # Django's short-lived maintenance connection
        return None
    return (wrapper.alias, wrapper.release_engine, wrapper.pool_name)


class Series:
    """The labelled children one alias writes to, looked up once (labels() takes a lock)."""

    def __init__(self, labels: Labels) -> None:
        self.wait = prometheus.connection_wait.labels(*labels)
        self.hold = prometheus.connection_hold.labels(*labels)
        self.checkouts = prometheus.checkouts.labels(*labels)
        self.checked_out = prometheus.checked_out.labels(*labels)
        self.timeouts = prometheus.pool_timeouts.labels(*labels)
        self.request_hold = prometheus.request_hold.labels(*labels)
        self.request_checkouts = prometheus.request_checkouts.labels(*labels)
        self.requests_ended_holding = prometheus.requests_ended_holding.labels(*labels)
        self.query_retries = prometheus.query_retries.labels(*labels)
        self.pool_idle = prometheus.pool_connections.labels(*labels, "idle")
        self.pool_in_use = prometheus.pool_connections.labels(*labels, "in_use")
        self.pool_max = prometheus.pool_max_connections.labels(*labels)


_series: dict[Labels, Series] = {}


class ViewSeries:
    """The per-view counters of one alias and view (bounded: views are the URLconf's)."""

    def __init__(self, labels: Labels, view: str) -> None:
        self.requests = prometheus.view_requests.labels(*labels, view)
        self.hold = prometheus.view_hold_seconds.labels(*labels, view)
        self.database = prometheus.view_database_seconds.labels(*labels, view)
        self.kept = prometheus.view_kept_seconds.labels(*labels, view)

    def add(self, usage: AliasUsage) -> None:
        self.requests.inc()
        self.hold.inc(usage.hold_seconds)
        self.database.inc(usage.database_seconds)
        self.kept.inc(usage.kept_seconds)


_view_series: dict[tuple[Labels, str], ViewSeries] = {}


def view_series(labels: Labels, view: str) -> ViewSeries:
    found = _view_series.get((labels, view))
    if found is None:
        found = _view_series.setdefault((labels, view), ViewSeries(labels, view))
    return found


def series(labels: Labels) -> Series:
    found = _series.get(labels)
    if found is None:
        found = _series.setdefault(labels, Series(labels))
    return found


class MetricsWatcher(instrumentation.CheckoutWatcher):
    """Counts each checkout when it ends, once the connection is back in the pool.

    The Prometheus series take a lock (one per process in multiprocess mode);
    a thread that waited for it while holding a connection would keep that
    connection from everyone else. So while the connection is out, only the
    request's own tally moves.
    """

    def checked_out(self, connection, wait_seconds: float) -> None:
        usage = request_usage()
        if usage is not None:
            labels = labels_of(connection)
            if labels is not None:
                alias = usage.alias(labels)
                alias.checkouts += 1
                alias.wait_seconds += wait_seconds

    def returned(
        self,
        connection,
        hold_seconds: float,
        wait_seconds: float,
        database_seconds: float,
        kept_seconds: float,
    ) -> None:
        labels = labels_of(connection)
        if labels is None:
            return
        children = series(labels)
        children.wait.observe(wait_seconds)
        children.hold.observe(hold_seconds)
        children.checkouts.inc()
        usage = request_usage()
        if usage is not None:
            alias = usage.alias(labels)
            alias.hold_seconds += hold_seconds
            alias.database_seconds += database_seconds
            alias.kept_seconds += kept_seconds

    def timed_out(self, connection, wait_seconds: float) -> None:
        labels = labels_of(connection)
        if labels is None:
            return
        series(labels).timeouts.inc()
        usage = request_usage()
        if usage is not None:
            usage.alias(labels).wait_seconds += wait_seconds

    def leaked(self, connection, open_cursors: int) -> None:
        labels = labels_of(connection)
        usage = request_usage()
        if labels is not None and usage is not None:
            usage.alias(labels).ended_holding = True

    def pinned(self, connection, reason: str) -> None:
        # Rare (session-level SQL), so taking the series' lock here costs nothing that matters.
        labels = labels_of(connection)
        if labels is not None:
            prometheus.connections_pinned.labels(*labels, reason).inc()

    def query_retried(self, connection) -> None:
        # The failed connection is back in the pool by now: the lock holds nothing up.
        labels = labels_of(connection)
        if labels is not None:
            series(labels).query_retries.inc()


watcher = MetricsWatcher()


class RequestsInFlight:
    """How many requests this process is answering now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def started(self) -> None:
        with self._lock:
            self._count += 1

    def finished(self) -> int:
        """One fewer; how many are left."""
        with self._lock:
            self._count = max(self._count - 1, 0)
            return self._count


in_flight = RequestsInFlight()


def on_request_started(sender, **kwargs) -> None:
    in_flight.started()
    forget_thread_usage()  # whatever an earlier request left on this thread


def on_request_finished(sender, **kwargs) -> None:
    """Sum the request up; runs after Django closed the request's connections."""
    idle = in_flight.finished() == 0
    usage = end_request_usage()
    if usage is None:
        return
    for labels, alias in usage.by_alias.items():
        children = series(labels)
        if alias.checkouts:
            children.request_hold.observe(alias.hold_seconds)
            children.request_checkouts.observe(alias.checkouts)
            view_series(labels, usage.view).add(alias)
        if alias.ended_holding:
            children.requests_ended_holding.inc()
    if idle:
        # The last request out reads the pools whatever the time: a worker that
        # goes quiet keeps its gauges as last read (each scrape reads only the
        # worker that answers it), and they must not show a busy moment forever.
        record_pool_usage()
    else:
        record_pool_usage_now_and_then()


# The pool gauges are refreshed after a request at most this often per process:
# reading a pool's stats takes its lock, which every checkout also takes. The
# /metrics view refreshes them for its own process whenever it answers.
POOL_GAUGES_INTERVAL_SECONDS = 0.1
_next_pool_refresh = 0.0


def record_pool_usage_now_and_then() -> None:
    global _next_pool_refresh
    now = monotonic()
    if now >= _next_pool_refresh:  # two threads may both refresh: harmless
        _next_pool_refresh = now + POOL_GAUGES_INTERVAL_SECONDS
        record_pool_usage()


def record_pool_usage() -> None:
    """Refresh the pool gauges (checked out now, idle, size) from this worker's pools."""
    # Every alias, not only those this thread touched: the pools are the process's.
    for wrapper in connections.all():
        labels = labels_of(wrapper)
        if labels is None or not hasattr(wrapper, "pool_usage"):
            continue
        pool = wrapper.pool_usage()
        children = series(labels)
        children.pool_idle.set(pool.idle)
        children.pool_in_use.set(pool.checked_out)
        children.checked_out.set(pool.checked_out)
        children.pool_max.set(pool.max_size)


def connect() -> None:
    instrumentation.watch(watcher)
    request_started.connect(on_request_started, dispatch_uid="apps.metrics.request_started")
    request_finished.connect(on_request_finished, dispatch_uid="apps.metrics.request_finished")
