"""Follow every checkout the same way on every engine.

A checkout runs from the moment the pool hands a connection over to the moment
it is given back (``DatabaseWrapper.close()``); its wait is the time spent
inside the pool asking for it. psycopg_pool's own ``usage_ms`` stays at 0 under
Django, which borrows with ``getconn()`` rather than ``pool.connection()``, so
the engines keep their own clock.

Each checkout also counts the cursors still open on it. The release engines
use that count to decide when a connection can go back early; every engine uses
it to spot a connection closed while a cursor on it was never closed (a leak).

A ``CheckoutWatcher`` hears about every checkout; the metrics app registers
one that turns them into Prometheus series and a per-request summary.
"""

from __future__ import annotations

import _thread
import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from time import perf_counter

from django.conf import settings
from django.db.backends.postgresql.base import CursorDebugWrapper
from django.db.backends.utils import CursorWrapper

from backends.pool import PoolExhausted

logger = logging.getLogger("backends.leaks")


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


# A tuple, replaced whole, so that a checkout in another thread never sees it change under it.
_watchers: tuple[CheckoutWatcher, ...] = ()


def watch(watcher: CheckoutWatcher) -> None:
    global _watchers
    if watcher not in _watchers:
        _watchers = (*_watchers, watcher)


@contextmanager
def unwatched() -> Iterator[None]:
    """No watcher hears of checkouts inside the block (what the engines cost on their own)."""
    global _watchers
    saved, _watchers = _watchers, ()
    try:
        yield
    finally:
        _watchers = saved


class Checkout:
    """One borrowing of a connection from the pool."""

    __slots__ = ("open_cursors", "opened_at")

    def __init__(self) -> None:
        self.open_cursors = 0
        # Where each open cursor was created; only filled in when the
        # DB_LEAK_DIAGNOSTICS setting is on (a stack costs tens of microseconds).
        self.opened_at: dict[int, str] = {}


class CountedCursorMixin:
    """A cursor that tells its checkout when it opens and closes."""

    def __init__(self, cursor, db) -> None:
        super().__init__(cursor, db)
        # Cursors made while connect() is still configuring the connection
        # belong to no checkout.
        self.checkout = db.checkout
        if self.checkout is not None:
            self.checkout.open_cursors += 1
            if db.trace_cursors:
                self.checkout.opened_at[id(self)] = "".join(traceback.format_stack(limit=12)[:-2])

    def close(self) -> None:
        try:
            self.cursor.close()
        finally:
            checkout, self.checkout = self.checkout, None
            # A second close() counts once. A close from another thread (a
            # finalizer) leaves the count alone: the connection then stays out
            # until its owner closes it, which is safe.
            if checkout is not None and self.db._thread_ident == _thread.get_ident():
                checkout.open_cursors -= 1
                checkout.opened_at.pop(id(self), None)
                self.db.cursor_closed(checkout)

    # No __del__ on purpose: the garbage collector may run in any thread, and
    # must not act on a connection another thread owns.


class CountedCursorWrapper(CountedCursorMixin, CursorWrapper):
    pass


class CountedCursorDebugWrapper(CountedCursorMixin, CursorDebugWrapper):
    pass


class InstrumentedMixin:
    """Time each checkout, count its cursors, and turn pool timeouts into PoolExhausted."""

    release_engine = "baseline"  # overridden by ConnectionReleaseMixin

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.checkout: Checkout | None = None
        self.checked_out_at: float | None = None
        self.checkout_wait: float = 0.0
        self.trace_cursors = getattr(settings, "DB_LEAK_DIAGNOSTICS", False)

    def get_new_connection(self, conn_params):
        started = perf_counter()
        try:
            connection = super().get_new_connection(conn_params)
        except self.pool_timeout_error as exc:
            waited = perf_counter() - started
            for watcher in _watchers:
                watcher.timed_out(self, waited)
            raise PoolExhausted(
                f"No connection free in the {self.pool_name} pool of database {self.alias!r} "
                f"after {waited:.2f}s: every connection is checked out."
            ) from exc
        self.checked_out_at = now = perf_counter()
        self.checkout_wait = waited = now - started
        for watcher in _watchers:
            watcher.checked_out(self, waited)
        return connection

    def connect(self) -> None:
        # No checkout while connect() configures the connection: the cursors it
        # opens, and the autocommit it switches on, are not the caller's.
        self.checkout = None
        try:
            super().connect()
        finally:
            if self.connection is not None:
                self.begin_checkout()

    def begin_checkout(self) -> None:
        """The connection is configured and the caller's from now on."""
        self.checkout = Checkout()

    def make_cursor(self, cursor):
        return CountedCursorWrapper(cursor, self)

    def make_debug_cursor(self, cursor):
        return CountedCursorDebugWrapper(cursor, self)

    def cursor_closed(self, checkout: Checkout) -> None:
        """A cursor of `checkout` closed; the release engines act on it."""

    def close(self) -> None:
        checkout = self.checkout
        if (
            checkout is not None
            and self.connection is not None
            and checkout.open_cursors
            and not self.in_atomic_block
        ):
            self.report_leaked_cursors(checkout)
        super().close()

    def _close(self) -> None:
        self.checkout = None  # cursors still open belong to a checkout that is over
        checked_out_at, self.checked_out_at = self.checked_out_at, None
        try:
            super()._close()
        finally:
            if checked_out_at is not None:
                held = perf_counter() - checked_out_at
                for watcher in _watchers:
                    watcher.returned(self, held, self.checkout_wait)

    def report_leaked_cursors(self, checkout: Checkout) -> None:
        """The connection is being closed while cursors opened on it were never closed."""
        for watcher in _watchers:
            watcher.leaked(self, checkout.open_cursors)
        if not self.trace_cursors:
            return
        stacks = "\n".join(checkout.opened_at.values()) or "(stack not recorded)\n"
        logger.warning(
            "Database alias %r held its connection until it was closed because %d cursor(s) "
            "opened on it were never closed. Close cursors (use `with connection.cursor()`) "
            "so the connection can go back to the pool early. Opened at:\n%s",
            self.alias,
            checkout.open_cursors,
            stacks,
        )
