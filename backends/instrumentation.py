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

    def returned(
        self,
        connection,
        hold_seconds: float,
        wait_seconds: float,
        database_seconds: float,
        kept_seconds: float,
    ) -> None:
        """The connection is back in the pool after `hold_seconds` out; it took `wait_seconds` to get.

        Of the hold, `database_seconds` ran statements (execute and fetch), and
        `kept_seconds` is what a release engine keeps the connection for:
        statements outside a transaction, whole transactions and
        hold_connection() blocks, a pinned checkout from its pin on, and all of
        a checkout that ended with cursors left open. The rest of the hold is
        idle: what release gives back.
        """

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


# Why a checkout's connection is kept whatever its statements do (InstrumentedMixin.keep()).
TRANSACTION = "transaction"
HOLD = "hold_connection"
PINNED = "pinned"


class InstrumentedMixin:
    """Time each checkout, and turn the pool's timeout into PoolExhausted.

    Besides the hold and the wait, a checkout's clock splits the hold: time in
    the database (the cursors report each statement, statement_ran()) and time
    a release engine could not give back (keep()). Every engine keeps them, the
    baseline included, so a stock site shows what release would give back.

    Reads ``pool_name`` and ``pool_timeout_error`` from the pool mixin below it.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.checked_out_at: float | None = None
        self.checkout_wait: float = 0.0
        # Of the current checkout: seconds its statements ran, and seconds it must be kept.
        self.database_seconds = 0.0
        self.kept_seconds = 0.0
        # Why the connection is kept now (TRANSACTION, HOLD, PINNED), and since when.
        self.keeping: set[str] = set()
        self.keeping_since = 0.0
        self.kept_whole = False

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
        self.database_seconds = self.kept_seconds = 0.0
        self.keeping_since = now
        for watcher in _watchers:
            watcher.checked_out(self, waited)
        return connection

    def _close(self) -> None:
        checked_out_at, self.checked_out_at = self.checked_out_at, None
        try:
            super()._close()
        finally:
            if checked_out_at is not None:
                now = perf_counter()
                held = now - checked_out_at
                kept = held if self.kept_whole else self.kept_seconds
                if self.keeping and not self.kept_whole:
                    kept += now - self.keeping_since
                self.keeping.discard(PINNED)  # a pin lasts one checkout; a transaction or a hold, its block
                self.kept_whole = False
                for watcher in _watchers:
                    watcher.returned(self, held, self.checkout_wait, self.database_seconds, min(kept, held))

    # The hold, split --------------------------------------------------------------

    def statement_ran(self, seconds: float) -> None:
        """A cursor's statement (or fetch) took `seconds` in the database."""
        self.database_seconds += seconds
        if not self.keeping:
            self.kept_seconds += seconds

    def keep(self, reason: str, keeping: bool = True) -> None:
        """From now on, the connection is kept for `reason` (or no longer, with keeping=False)."""
        if keeping == (reason in self.keeping):
            return
        now = perf_counter()
        if keeping:
            if not self.keeping:
                self.keeping_since = now
            self.keeping.add(reason)
        else:
            self.keeping.discard(reason)
            if not self.keeping:
                self.kept_seconds += now - self.keeping_since

    def keep_whole_checkout(self) -> None:
        """The checkout ends with cursors still open: all of it counts as kept."""
        self.kept_whole = True

    def _set_autocommit(self, autocommit: bool) -> None:
        super()._set_autocommit(autocommit)
        # Autocommit off is the outermost atomic() beginning; on, its end (and,
        # on every release checkout, a no-op, hence the test first).
        if autocommit != (TRANSACTION not in self.keeping):
            self.keep(TRANSACTION, not autocommit)
