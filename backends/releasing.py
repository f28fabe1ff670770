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

A release happens once per query, so it is kept short: it returns the
connection (``_close()``, which every pooled backend turns into "give it back to
the pool") and leaves the rest of the wrapper as it is. Borrowing again after a
release then only takes a connection from the pool, instead of redoing all of
``connect()``: outside a transaction, with autocommit on, the state that
``connect()`` resets is already what it would reset it to.

Nothing here knows which pool is underneath. The open-cursor count and the
checkout clock come from ``backends.instrumentation``, which every engine shares.
"""

from __future__ import annotations

import _thread

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.signals import connection_created
from psycopg.pq import TransactionStatus

from backends.instrumentation import Checkout

# What the server says of a connection inside a transaction. Outside atomic(),
# with autocommit on, only SQL like a raw "BEGIN" gets it there; a broken
# connection (UNKNOWN) is given back, for the pool to throw away.
OPEN_TRANSACTION = frozenset({TransactionStatus.INTRANS, TransactionStatus.INERROR})


class ConnectionReleaseMixin:
    """Put in front of an instrumented, pooled PostgreSQL ``DatabaseWrapper``."""

    release_engine = "release"

    def __init__(self, settings_dict, *args, **kwargs) -> None:
        super().__init__(settings_dict, *args, **kwargs)
        if not settings_dict.get("AUTOCOMMIT", True):
            raise ImproperlyConfigured(
                f"DATABASES[{self.alias!r}] sets AUTOCOMMIT to False, so every connection is in a "
                f"transaction from its first query and {settings_dict['ENGINE']!r} could never give "
                "one back early. Remove AUTOCOMMIT (it defaults to True) and use transaction.atomic() "
                "where you need a transaction, or use a baseline engine."
            )
        # True from a release until the next checkout: the wrapper is exactly as
        # connect() left it, less the connection.
        self.released = False

    def cursor_closed(self, checkout: Checkout) -> None:
        super().cursor_closed(checkout)
        self.release_if_idle(checkout)

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
            and not self.in_atomic_block
            and self.autocommit
            # Only the owning thread gives the connection back: a finalizer or a
            # garbage-collector run in another thread never does.
            and self._thread_ident == _thread.get_ident()
            # Django's flags miss a transaction begun with raw SQL, which the
            # pool would roll back. libpq knows; read it there rather than
            # through connection.info, which builds an enum on every read.
            and self.connection.pgconn.transaction_status not in OPEN_TRANSACTION
        ):
            self.release()

    def release(self) -> None:
        """Give the connection back to the pool: close() without what only matters mid-transaction."""
        try:
            self._close()
        finally:
            self.connection = None
        self.released = True

    def connect(self) -> None:
        if self.released:
            self.borrow_again()
        else:
            super().connect()

    def borrow_again(self) -> None:
        """connect() after a release: only take a connection from the pool.

        Django's connect() also clears the transaction state, checks the
        settings, switches autocommit on and checks the server version once; a
        release leaves all of that as connect() set it.
        """
        self.released = False
        self.errors_occurred = False
        self.health_check_done = True  # the pool checks what it hands out
        self.connection = self.get_new_connection(self.checkout_params())
        try:
            # Returned by a wrapper that had switched autocommit off (the pool
            # rolls back, but leaves the mode): switch it back on.
            self._set_autocommit(True)
            connection_created.send(sender=self.__class__, connection=self)
        finally:
            # Even if a receiver raised: the connection is the caller's, and its
            # cursors must count, or it would never go back before close().
            self.begin_checkout()
