"""Give a pooled connection back to its pool as soon as nothing needs it.

Stock Django keeps the connection a request borrowed until the request ends
(``close_old_connections``), so a view that runs one query and then waits on an
HTTP call or renders a template holds a pool slot while doing nothing with it.

Here the connection goes back to the pool the moment nothing can still use it:

* no transaction is open (not inside ``atomic()``, autocommit on, and none
  begun with a raw ``BEGIN``), and
* no cursor opened on this checkout is still open.

That is checked when a cursor closes (Django's ORM closes its cursors as soon as
the results are read) and when autocommit comes back on (the end of the
outermost ``atomic()`` block, after its ``on_commit`` hooks ran). The next query
simply borrows a connection again.

This module holds only that rule. How a checkout begins, counts its cursors,
ends and is borrowed again is ``backends.checkout``'s, which every engine
shares; nothing here knows which pool is underneath.
"""

from __future__ import annotations

import _thread

from django.core.exceptions import ImproperlyConfigured
from psycopg.pq import TransactionStatus

from backends import compat, instrumentation
from backends.checkout import Checkout, CheckoutMixin, CountedCursorDebugWrapper, CountedCursorWrapper
from backends.operations import RetryReadsOperations
from backends.session import HOLD_CONNECTION, SessionStateCursorMixin

# What the server says of a connection inside a transaction. Outside atomic(),
# with autocommit on, only SQL like a raw "BEGIN" gets it there; a broken
# connection (UNKNOWN) is given back, for the pool to throw away.
OPEN_TRANSACTION = frozenset({TransactionStatus.INTRANS, TransactionStatus.INERROR})


class ReleaseCursorWrapper(SessionStateCursorMixin, CountedCursorWrapper):
    pass


class ReleaseCursorDebugWrapper(SessionStateCursorMixin, CountedCursorDebugWrapper):
    pass


class ConnectionReleaseMixin(compat.RoleSetOnTheConnectionMixin, CheckoutMixin):
    """A checkout that ends as soon as nothing can use the connection; in front of InstrumentedMixin."""

    release_engine = "release"
    cursor_wrapper_class = ReleaseCursorWrapper
    debug_cursor_wrapper_class = ReleaseCursorDebugWrapper
    # ORM reads that fail with their connection run again on a fresh one (backends.compiler).
    ops_class = RetryReadsOperations

    def __init__(self, settings_dict, *args, **kwargs) -> None:
        super().__init__(settings_dict, *args, **kwargs)
        if not settings_dict.get("AUTOCOMMIT", True):
            raise ImproperlyConfigured(
                f"DATABASES[{self.alias!r}] sets AUTOCOMMIT to False, so every connection is in a "
                f"transaction from its first query and {settings_dict['ENGINE']!r} could never give "
                "one back early. Remove AUTOCOMMIT (it defaults to True) and use transaction.atomic() "
                "where you need a transaction, or use a baseline engine."
            )
        # True while _cursor() connects for the cursor it is about to make.
        self.opening_cursor = False

    def _cursor(self, name=None):
        if self.connection is not None:
            return super()._cursor(name)
        if self.released:
            # The first cursor after a release, once per query: borrow and make
            # the cursor here. Django's _cursor() would check the health flags
            # and call ensure_connection() (which finds connect() to call),
            # each in its own error translation; after a release,
            # borrow_again() sets every flag they read, and errors are
            # translated the same way, when there are some. Saves about 4,000
            # instructions per checkout (make instructions).
            try:
                self.borrow_again()
                return compat.cursor_once_connected(self, name)
            except self.Database.Error:
                with self.wrap_database_errors:
                    raise
        # Connecting through Django: between connecting and making its cursor,
        # Django may run code that opens and closes a cursor of its own (setup
        # SQL right after connecting, in an overridden ensure_connection()):
        # that must not give the connection back under Django, which is about
        # to use it.
        self.opening_cursor = True
        try:
            return super()._cursor(name)
        finally:
            self.opening_cursor = False

    def hold(self) -> None:
        super().hold()
        if self.holds == 1:
            instrumentation.pinned(self, HOLD_CONNECTION)

    def unhold(self) -> None:
        super().unhold()
        if not self.holds:
            self.release_if_idle(self.checkout)

    def set_autocommit(self, autocommit, *args, **kwargs):
        try:
            super().set_autocommit(autocommit, *args, **kwargs)
        finally:
            # Autocommit back on: the outermost atomic() block has committed or
            # rolled back and its on_commit hooks have run (inside the call
            # above, with the connection still live; if one raised, the
            # transaction is over all the same). Inside connect() there is no
            # checkout yet, so switching autocommit on there releases nothing.
            if autocommit and self.autocommit:
                self.release_if_idle(self.checkout)

    def get_autocommit(self):
        # Nothing borrowed: the next connection will be in the configured mode,
        # so don't borrow one only to answer (on_commit() outside atomic() asks).
        if self.connection is None and not self.in_atomic_block:
            return self.settings_dict["AUTOCOMMIT"]
        return super().get_autocommit()

    def release_if_idle(self, checkout: Checkout | None) -> None:
        if (
            checkout is not None
            # A cursor left over from an earlier checkout must not release this one.
            and checkout is self.checkout
            and checkout.open_cursors == 0
            # Session state set on it, or inside hold_connection().
            and checkout.pinned is None
            and not self.holds
            and not self.opening_cursor
            and not self.in_atomic_block
            and self.autocommit
            # Only the owning thread gives the connection back: a finalizer or a
            # garbage-collector run in another thread never does.
            and self.owner_thread == _thread.get_ident()
            # Django's flags miss a transaction begun with raw SQL, which the
            # pool would roll back. libpq knows; read it there rather than
            # through connection.info, which builds an enum on every read.
            and self.connection.pgconn.transaction_status not in OPEN_TRANSACTION
        ):
            # Give the connection back: close() without what only matters
            # mid-transaction. The wrapper stays as connect() left it, less
            # the connection, until borrow_again().
            try:
                self._close()
            finally:
                self.connection = None
            self.released = True

    # A cursor of `checkout` closed: give the connection back if nothing needs it.
    # (CheckoutMixin's is empty; named directly, one call fewer per query.)
    cursor_closed = release_if_idle
