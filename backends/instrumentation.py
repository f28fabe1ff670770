"""Time every checkout the same way on every engine, and tell the watchers.

A checkout runs from the moment the pool hands a connection over to the moment
it is given back (``DatabaseWrapper.close()``); its wait is the time spent
inside the pool asking for it. psycopg_pool's own ``usage_ms`` stays at 0 under
Django, which borrows with ``getconn()`` rather than ``pool.connection()``, so
the engines keep their own clock. A pool that gives up waiting raises
``PoolExhausted`` here, whichever pool it is, or ``DatabaseUnreachable`` when
the server cannot be reached (``backends.reachability``).

What a checkout is, its cursors and when it ends, is ``backends.checkout``'s.

A ``CheckoutWatcher`` hears about every checkout; the metrics app registers
one that turns them into Prometheus series and a per-request summary.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from time import perf_counter

from backends import reachability
from backends.errors import DATABASE_UNREACHABLE, transient_cause
from backends.pool import DatabaseUnreachable, PoolExhausted


class CheckoutWatcher:
    """Hears about the checkouts of every instrumented engine; pass one to watch().

    `connection` is always the DatabaseWrapper. Plain method calls rather than
    Django signals: the release engines check out once per query, and two
    signal dispatches per query cost more than the pool's own bookkeeping.
    """

    def checked_out(self, connection, wait_seconds: float) -> None:
        """The pool handed a connection over after `wait_seconds`; keep this quick, the clock runs."""

    def returned(self, connection, hold_seconds: float, wait_seconds: float) -> None:
        """The connection is back in the pool after `hold_seconds` out; it took `wait_seconds` to get."""

    def timed_out(self, connection, wait_seconds: float) -> None:
        """No connection came free within the pool's timeout."""

    def leaked(self, connection, open_cursors: int) -> None:
        """Closed outside a transaction with `open_cursors` cursors never closed."""

    def pinned(self, connection, reason: str) -> None:
        """A release engine keeps this checkout until close() because of `reason` (session state)."""

    def query_retried(self, connection) -> None:
        """An ORM read failed with its connection and runs again on a fresh one (backends.compiler)."""


# A tuple, replaced whole, so that a checkout in another thread never sees it change under it.
_watchers: tuple[CheckoutWatcher, ...] = ()


# Held only while the tuple is replaced, never on a checkout.
_watchers_changing = threading.Lock()


def watch(watcher: CheckoutWatcher) -> None:
    global _watchers
    with _watchers_changing:
        if watcher not in _watchers:
            _watchers = (*_watchers, watcher)


def unwatch(watcher: CheckoutWatcher) -> None:
    global _watchers
    with _watchers_changing:
        _watchers = tuple(w for w in _watchers if w is not watcher)


@contextmanager
def unwatched() -> Iterator[None]:
    """No watcher hears of checkouts inside the block (what the engines cost on their own)."""
    global _watchers
    saved, _watchers = _watchers, ()
    try:
        yield
    finally:
        _watchers = saved


def leaked(connection, open_cursors: int) -> None:
    for watcher in _watchers:
        watcher.leaked(connection, open_cursors)


def pinned(connection, reason: str) -> None:
    for watcher in _watchers:
        watcher.pinned(connection, reason)


def query_retried(connection) -> None:
    for watcher in _watchers:
        watcher.query_retried(connection)


class InstrumentedMixin:
    """Time each checkout, and turn the pool's timeout into PoolExhausted.

    Reads ``pool_name`` and ``pool_timeout_error`` from the pool mixin below it.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.checked_out_at: float | None = None
        self.checkout_wait: float = 0.0

    def get_new_connection(self, conn_params):
        started = perf_counter()
        try:
            connection = super().get_new_connection(conn_params)
        except self.pool_timeout_error as exc:
            waited = perf_counter() - started
            for watcher in _watchers:
                watcher.timed_out(self, waited)
            # The pool also times out while it cannot open connections.
            error = reachability.connect_error(self)
            if error is not None:
                raise DatabaseUnreachable(
                    f"No connection from the {self.pool_name} pool of database {self.alias!r} after "
                    f"{waited:.2f}s: the database cannot be reached ({error})."
                ) from exc
            raise PoolExhausted(
                f"No connection free in the {self.pool_name} pool of database {self.alias!r} "
                f"after {waited:.2f}s: every connection is checked out."
            ) from exc
        except self.Database.OperationalError as exc:
            # A pool that connects in the caller's thread (QueuePool) lets this through.
            if transient_cause(exc) != DATABASE_UNREACHABLE:
                raise
            raise DatabaseUnreachable(f"Could not connect to database {self.alias!r}: {exc}") from exc
        self.checked_out_at = now = perf_counter()
        self.checkout_wait = waited = now - started
        for watcher in _watchers:
            watcher.checked_out(self, waited)
        return connection

    def _close(self) -> None:
        checked_out_at, self.checked_out_at = self.checked_out_at, None
        try:
            super()._close()
        finally:
            if checked_out_at is not None:
                held = perf_counter() - checked_out_at
                for watcher in _watchers:
                    watcher.returned(self, held, self.checkout_wait)
