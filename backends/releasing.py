"""Give a pooled connection back to its pool as soon as nothing needs it.

Stock Django keeps the connection a request borrowed until the request ends
(``close_old_connections``), so a view that runs one query and then waits on an
HTTP call or renders a template holds a pool slot while doing nothing with it.

Here the connection goes back to the pool the moment nothing can still use it:

* no transaction is open (not inside ``atomic()``, autocommit on), and
* no cursor opened on this checkout is still open.

That is checked when a cursor closes (Django's ORM closes its cursors as soon as
the results are read) and when autocommit comes back on (the end of the
outermost ``atomic()`` block, after its ``on_commit`` hooks ran). The next query
simply borrows a connection again.

Nothing here knows which pool is underneath: giving the connection back is
``DatabaseWrapper.close()``, which every pooled backend turns into "return it to
the pool".
"""

from __future__ import annotations

import _thread
import logging
import traceback

from django.conf import settings
from django.db.backends.postgresql.base import CursorDebugWrapper
from django.db.backends.utils import CursorWrapper

logger = logging.getLogger("backends.release")


class Checkout:
    """One borrowing of a connection from the pool, and the cursors open on it."""

    __slots__ = ("open_cursors", "opened_at")

    def __init__(self) -> None:
        self.open_cursors = 0
        # Where each open cursor was created, only filled in when the
        # DB_LEAK_DIAGNOSTICS setting is on (a stack costs tens of microseconds).
        self.opened_at: dict[int, str] = {}


class ReleasingCursorMixin:
    """A cursor whose close() may give the connection back to the pool."""

    def __init__(self, cursor, db) -> None:
        super().__init__(cursor, db)
        # Cursors made while connect() is still configuring the connection have
        # no checkout yet and never release anything.
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
            if checkout is not None:  # a second close() counts once
                checkout.open_cursors -= 1
                checkout.opened_at.pop(id(self), None)
                self.db.release_if_idle(checkout)

    # No __del__ on purpose: the garbage collector may run in any thread, and
    # releasing from there could hand back a connection its owner is using.


class ReleasingCursorWrapper(ReleasingCursorMixin, CursorWrapper):
    pass


class ReleasingCursorDebugWrapper(ReleasingCursorMixin, CursorDebugWrapper):
    pass


class ConnectionReleaseMixin:
    """Put in front of a pooled PostgreSQL ``DatabaseWrapper``."""

    release_engine = "release"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.checkout: Checkout | None = None
        self.trace_cursors = getattr(settings, "DB_LEAK_DIAGNOSTICS", False)

    def connect(self) -> None:
        # connect() itself switches autocommit on, which would look like the
        # end of a transaction to set_autocommit() below: no checkout exists
        # until the connection is fully set up, so nothing is released early.
        self.checkout = None
        super().connect()
        self.checkout = Checkout()

    def make_cursor(self, cursor):
        return ReleasingCursorWrapper(cursor, self)

    def make_debug_cursor(self, cursor):
        return ReleasingCursorDebugWrapper(cursor, self)

    def set_autocommit(self, autocommit, force_begin_transaction_with_broken_autocommit=False):
        super().set_autocommit(
            autocommit,
            force_begin_transaction_with_broken_autocommit=force_begin_transaction_with_broken_autocommit,
        )
        # Autocommit back on: the outermost atomic() block has committed or
        # rolled back and its on_commit hooks have run (they ran inside the
        # call above, with the connection still live).
        if autocommit:
            self.release_if_idle(self.checkout)

    def release_if_idle(self, checkout: Checkout | None) -> None:
        if (
            checkout is not None
            # A cursor left over from an earlier checkout must not release this one.
            and checkout is self.checkout
            and checkout.open_cursors == 0
            and not self.in_atomic_block
            and self.autocommit
            # Only the owning thread gives the connection back, never a
            # garbage-collector run or a finalizer in some other thread.
            and self._thread_ident == _thread.get_ident()
        ):
            self.close()

    def close(self) -> None:
        checkout = self.checkout
        if checkout is not None and checkout.open_cursors and not self.in_atomic_block:
            self.report_leaked_cursors(checkout)
        self.checkout = None
        super().close()

    def report_leaked_cursors(self, checkout: Checkout) -> None:
        """The connection is being closed while cursors opened on it were never closed."""
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

    @property
    def has_leaked_cursors(self) -> bool:
        """True while a cursor opened outside a transaction keeps the connection."""
        return (
            self.checkout is not None
            and self.checkout.open_cursors > 0
            and not self.in_atomic_block
            and self.autocommit
        )
