"""The life of a checkout: from the pool handing a connection over to the wrapper giving it back.

A checkout begins when ``connect()`` has a configured connection for the
caller, counts the cursors opened on it, remembers why it must be kept (session
state, ``hold_connection()``), and ends in ``_close()``, which resets what
needs resetting and gives the connection back. Every engine runs this; the
release engines add one rule on top (``backends.releasing``): end the checkout
as soon as nothing can still use it.

An engine is assembled in this order, each layer calling the next with super()::

    ConnectionReleaseMixin   the release rule (backends.releasing); baseline engines
      CheckoutMixin          use CheckoutMixin itself: this module
    InstrumentedMixin        hold and wait times, watchers, PoolExhausted (backends.instrumentation)
    NativePoolMixin / QueuePoolMixin   the pool (backends.nativepool, backends.queuepool)
    Django's PostgreSQL DatabaseWrapper (or django-db-connection-pool's)

A class that puts them in another order fails when it is defined.

The two call sequences (backends/README.md points here; this is their only
home, next to the code they describe). Release, once per query outside a
transaction::

    CountedCursorWrapper.close()                   the cursor's checkout: one driver cursor fewer
                                                   (counted once however many wrappers sit around
                                                   it: the debug toolbar's SQL panel adds one)
      -> ConnectionReleaseMixin.release_if_idle()  no cursor, no transaction (Django's flags and
                                                   libpq's), not pinned, not held, owning thread
      -> CheckoutMixin._close()                    DISCARD ALL first if session SQL ran
      -> InstrumentedMixin._close()                hold time to the watchers
      -> NativePoolMixin._close()  -> psycopg_pool ConnectionPool.putconn()
         QueuePoolMixin._close()   -> QueuePool's proxy .close()

Borrow again, the first cursor after a release::

    BaseDatabaseWrapper.cursor() -> ConnectionReleaseMixin._cursor()
      -> CheckoutMixin.borrow_again()              the wrapper as connect() leaves it
                                                   (compat.reset_state_as_connect_does)
      -> InstrumentedMixin.get_new_connection()    wait time, PoolExhausted
      -> NativePoolMixin.get_new_connection()  -> ConnectionPool.getconn() (+ health.needs_ping)
         QueuePoolMixin.get_new_connection()   -> QueuePool.connect() (its pre-ping asks health)
      -> autocommit on, connection_created, a new Checkout
      -> compat.cursor_once_connected()            what Django's _cursor() does once connected

The first connection of a wrapper, and the first after ``close()``, goes
through Django's own ``ensure_connection()`` and ``connect()`` instead
(``CheckoutMixin.connect``), with no checkout until it returns; the release
rule does not act while Django is between connecting and making its cursor.
Session-level SQL (``session.session_state``, asked by the release engines'
cursors before each ``execute``) pins the checkout: the rule then leaves it
with the wrapper until ``close()``, whose ``_close()`` resets it.
"""

from __future__ import annotations

import _thread
import logging
import traceback
from time import perf_counter

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.postgresql.base import CursorDebugWrapper
from django.db.backends.postgresql.base import DatabaseWrapper as PostgresWrapper
from django.db.backends.signals import connection_created
from django.db.backends.utils import CursorWrapper

from backends import compat, instrumentation, session
from backends.instrumentation import InstrumentedMixin
from backends.pool import POOL_MIXIN_MEMBERS

logger = logging.getLogger("backends.leaks")


class Checkout:
    """One borrowing of a connection from the pool.

    Made once per query on a release engine, so without an __init__: the class
    attributes are the starting values, and each instance only stores what
    changes (saves a call per checkout).
    """

    # Driver cursors opened on this checkout and not closed yet.
    open_cursors = 0
    # Where each open driver cursor was created, by id(): only with the
    # DB_LEAK_DIAGNOSTICS setting on (a stack costs tens of microseconds).
    opened_at: dict[int, str] | None = None
    # Why the connection stays with the wrapper until close() whatever the
    # release rule says (session state set outside hold_connection()), or None.
    pinned: str | None = None
    # Session-level SQL ran: reset the connection before the pool has it back.
    needs_reset = False


class CountedCursorMixin:
    """A cursor that tells its checkout when the driver cursor it wraps opens and closes.

    Counted per driver cursor, not per wrapper: tools that log SQL wrap a
    driver cursor a second time in the engine's own cursor class and close
    only their wrapper. django-debug-toolbar's SQL panel does, for every
    cursor, with a subclass of this one made around ``cursor.cursor``; counted
    per wrapper, each query would leave a cursor open, and the connection with it.
    """

    def __init__(self, cursor, db) -> None:
        super().__init__(cursor, db)
        checkout = db.checkout
        # Cursors made while connect() is still configuring the connection
        # belong to no checkout; a driver cursor wrapped again counts once.
        if checkout is not None and cursor not in db.counted_cursors:
            db.counted_cursors[cursor] = checkout
            checkout.open_cursors += 1
            if db.trace_cursors:
                if checkout.opened_at is None:
                    checkout.opened_at = {}
                checkout.opened_at[id(cursor)] = "".join(traceback.format_stack(limit=12)[:-2])

    def close(self) -> None:
        cursor = self.cursor
        try:
            cursor.close()
        finally:
            # Whichever wrapper closes the driver cursor first ends its count;
            # a second close(), of this wrapper or another, finds none. A
            # close from another thread (a finalizer) ends it without counting
            # it down: the connection then stays out until its owner closes
            # it, which is safe.
            checkout = self.db.counted_cursors.pop(cursor, None)
            if checkout is not None and self.db.owner_thread == _thread.get_ident():
                checkout.open_cursors -= 1
                if checkout.opened_at is not None:
                    checkout.opened_at.pop(id(cursor), None)
                self.db.cursor_closed(checkout)

    # Each statement's time in the database, for the checkout's clock
    # (InstrumentedMixin.statement_ran()). Fetching counts: a server-side
    # cursor reads its rows from the server.

    def execute(self, sql, params=None):
        started = perf_counter()
        try:
            return super().execute(sql, params)
        finally:
            self.db.statement_ran(perf_counter() - started)

    def executemany(self, sql, param_list):
        started = perf_counter()
        try:
            return super().executemany(sql, param_list)
        finally:
            self.db.statement_ran(perf_counter() - started)

    def fetchone(self):
        return self.timed_fetch(self.cursor.fetchone)

    def fetchmany(self, *args, **kwargs):
        return self.timed_fetch(self.cursor.fetchmany, *args, **kwargs)

    def fetchall(self):
        return self.timed_fetch(self.cursor.fetchall)

    def timed_fetch(self, fetch, *args, **kwargs):
        # What Django's CursorWrapper.__getattr__ does for the fetch methods, timed.
        started = perf_counter()
        try:
            with self.db.wrap_database_errors:
                return fetch(*args, **kwargs)
        finally:
            self.db.statement_ran(perf_counter() - started)

    # No __del__ on purpose: the garbage collector may run in any thread, and
    # must not act on a connection another thread owns.


class CountedCursorWrapper(CountedCursorMixin, CursorWrapper):
    pass


class CountedCursorDebugWrapper(CountedCursorMixin, CursorDebugWrapper):
    pass


class CheckoutMixin:
    """Begin, follow and end each checkout; put in front of InstrumentedMixin."""

    release_engine = "baseline"  # ConnectionReleaseMixin says "release"
    cursor_wrapper_class = CountedCursorWrapper
    debug_cursor_wrapper_class = CountedCursorDebugWrapper

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        check_engine_layers(cls)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.checkout: Checkout | None = None
        # True from a release until the next checkout: the wrapper is exactly as
        # connect() left it, less the connection.
        self.released = False
        # Django's connections are per thread: the thread that builds a wrapper owns it.
        self.owner_thread = _thread.get_ident()
        self.trace_cursors = getattr(settings, "DB_LEAK_DIAGNOSTICS", False)
        # The driver cursors the current checkout counts as open, each with
        # that checkout. Emptied when a checkout ends: a cursor never closed
        # is not kept alive past its checkout.
        self.counted_cursors: dict = {}
        # How many hold_connection() blocks are open on this wrapper.
        self.holds = 0

    # Beginning ----------------------------------------------------------------------

    def connect(self) -> None:
        if self.released:
            self.borrow_again()
            return
        # No checkout while connect() configures the connection: the cursors it
        # opens, and the autocommit it switches on, are not the caller's.
        self.checkout = None
        try:
            super().connect()
        finally:
            if self.connection is not None:
                self.begin_checkout()

    def borrow_again(self) -> None:
        """connect() after a release: take a connection from the pool, leave the rest as it is.

        The wrapper's state is reset as connect() resets it; the connection
        parameters are not rebuilt (the pool has them) and
        init_connection_state() does not run again: the server version is known,
        and the pool hands out connections already configured (time zone, role).
        """
        self.released = False
        self.checkout = None
        compat.reset_state_as_connect_does(self)
        # No parameters: the pool layer asks checkout_params() when it needs them.
        self.connection = self.get_new_connection({})
        try:
            # Returned by a wrapper that had switched autocommit off (the pool
            # rolls back, but leaves the mode): switch it back on. The release
            # engines refuse AUTOCOMMIT=False, so on is what connect() would set.
            self._set_autocommit(True)
            self.autocommit = True
            if connection_created.receivers:  # what send() looks at first, without the call
                connection_created.send(sender=self.__class__, connection=self)
        finally:
            # Even if a receiver raised: the connection is the caller's, and its
            # cursors must count, or it would never go back before close().
            # (begin_checkout(), inlined: once per query.)
            self.checkout = Checkout()

    def begin_checkout(self) -> None:
        """The connection is configured and the caller's from now on."""
        self.checkout = Checkout()

    # Following --------------------------------------------------------------------

    def make_cursor(self, cursor):
        return self.cursor_wrapper_class(cursor, self)

    def make_debug_cursor(self, cursor):
        return self.debug_cursor_wrapper_class(cursor, self)

    def cursor_closed(self, checkout: Checkout) -> None:
        """A cursor of `checkout` closed; the release engines act on it."""

    def keep_for_session_state(self, reason: str) -> None:
        """Session-level SQL is about to run (`reason`): keep the connection, reset it at the end."""
        checkout = self.checkout
        if checkout is None:
            # Run while connect() configures the connection (a connection_created
            # receiver): configuration, which runs again on every checkout.
            return
        checkout.needs_reset = True
        if self.holds or checkout.pinned is not None:
            return  # hold_connection() keeps it already, and resets it when its block ends
        checkout.pinned = reason
        self.keep(instrumentation.PINNED)
        instrumentation.pinned(self, reason)
        if self.trace_cursors:
            logger.warning(
                "Database alias %r keeps its connection until the end of the request: this SQL "
                "leaves session state (%s) that would otherwise reach the next borrower of the "
                "connection. Use SET LOCAL (or set_config(..., true)) inside transaction.atomic(), "
                "or wrap the session work in backends.release.hold_connection(). Run at:\n%s",
                self.alias,
                reason,
                "".join(traceback.format_stack(limit=14)[:-3]),
            )

    def hold(self) -> None:
        """Enter hold_connection(): borrow a connection now and keep it until the outermost block ends."""
        self.ensure_connection()
        self.holds += 1
        self.keep(instrumentation.HOLD)

    def unhold(self) -> None:
        self.holds -= 1
        if not self.holds:
            self.keep(instrumentation.HOLD, False)

    # Ending -----------------------------------------------------------------------

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
        checkout, self.checkout = self.checkout, None  # cursors still open belong to a checkout that is over
        if self.counted_cursors:
            self.counted_cursors = {}
        if checkout is not None and checkout.needs_reset and self.connection is not None:
            self.reset_session()
        super()._close()

    def reset_session(self) -> None:
        """DISCARD ALL, then Django's time zone and role again; a connection that fails it is closed."""
        driver = self.driver_connection()
        try:
            session.reset(driver)
            compat.configure_connection(self, driver)
        except Exception as exc:  # noqa: BLE001 - whatever it is, the connection must not be reused
            logger.warning(
                "Database alias %r: resetting the session of a connection failed (%s); it is "
                "closed rather than given to another borrower.",
                self.alias,
                exc,
            )
            self.discard_connection()

    def report_leaked_cursors(self, checkout: Checkout) -> None:
        """The connection is being closed while cursors opened on it were never closed."""
        self.keep_whole_checkout()
        instrumentation.leaked(self, checkout.open_cursors)
        if not self.trace_cursors:
            return
        stacks = "\n".join((checkout.opened_at or {}).values()) or "(stack not recorded)\n"
        logger.warning(
            "Database alias %r held its connection until it was closed because %d cursor(s) "
            "opened on it were never closed. Close cursors (use `with connection.cursor()`) "
            "so the connection can go back to the pool early. Opened at:\n%s",
            self.alias,
            checkout.open_cursors,
            stacks,
        )


# The order of the layers ---------------------------------------------------------


def check_engine_layers(cls: type) -> None:
    """Raise ImproperlyConfigured unless `cls` stacks the layers in the order above.

    Each layer calls the next with super() and relies on what it finds there:
    the checkout relies on the instrumentation to time get_new_connection()
    and _close(); the instrumentation reads ``pool_name`` and
    ``pool_timeout_error`` from the pool mixin below it and must catch the
    pool's timeout before Django sees it; the pool mixin overrides Django's
    wrapper. Mixins that are not yet a whole engine are not checked.
    """
    if not issubclass(cls, PostgresWrapper):
        return
    mro = cls.__mro__
    if InstrumentedMixin not in mro:
        raise ImproperlyConfigured(
            f"{cls.__qualname__} has no InstrumentedMixin: put backends.instrumentation.InstrumentedMixin "
            "right after the checkout mixin (ConnectionReleaseMixin or CheckoutMixin)."
        )
    checkout_at, instrumented_at, django_at = (
        mro.index(CheckoutMixin),
        mro.index(InstrumentedMixin),
        mro.index(PostgresWrapper),
    )
    pool_layer = next(
        (klass for klass in mro[instrumented_at + 1 : django_at] if "pool_name" in vars(klass)), None
    )
    expected = "ConnectionReleaseMixin (or CheckoutMixin), InstrumentedMixin, a pool mixin, Django's wrapper"
    if not checkout_at < instrumented_at < django_at or pool_layer is None:
        raise ImproperlyConfigured(
            f"{cls.__qualname__} stacks its layers as "
            f"{[klass.__name__ for klass in mro[: django_at + 1]]}; they must come in this order: "
            f"{expected}, e.g. class DatabaseWrapper(ConnectionReleaseMixin, InstrumentedMixin, "
            "NativePoolMixin, base.DatabaseWrapper)."
        )
    missing = [name for name in POOL_MIXIN_MEMBERS if not hasattr(pool_layer, name)]
    if missing:
        raise ImproperlyConfigured(
            f"{pool_layer.__qualname__}, the pool layer of {cls.__qualname__}, lacks {missing}: "
            "a pool mixin provides everything the backends.pool.PoolMixin protocol lists."
        )
