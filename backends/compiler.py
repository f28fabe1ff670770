"""ORM reads that survive a dead connection: run again on a fresh one.

A connection can die while it sits in the pool or between two queries: the
server restarted, an administrator ran ``pg_terminate_backend``, a network
device dropped it. The pool's checkout check catches most of them; the rest
fail the first query that uses them. For a read the release engines can do
better than fail: they gave the dead connection back the moment its cursor
closed, so the same query can simply run again on the next connection the pool
hands out. Rails does this for its own reads.

The release engines name this module as their ``DatabaseOperations.compiler_module``
(the extension point third-party backends use to change how queries run), so
only SQL compiled by Django's query compiler from a ``SELECT`` queryset passes
through here. A query is run again, at most ``READ_RETRIES`` times, when all of
these hold:

* it is a read (``SQLCompiler`` or ``SQLAggregateCompiler``: never an insert,
  update or delete, never raw SQL, which goes through ``connection.cursor()``);
* the error says the connection broke (``backends.errors.is_connection_error``),
  not that the query was wrong or slow;
* no transaction was open (not inside ``atomic()``), before or after;
* no row reached the caller: ``execute_sql()`` reads every row before returning,
  except for ``.iterator()`` (a chunked fetch), whose rows are fetched after it
  returned, out of reach of this retry;
* the engine gave the dead connection back on its own, which it does only when
  nothing else was open on it: no other cursor, no ``hold_connection()`` block,
  and no session state (``SET``, advisory locks, temporary tables) that a fresh
  connection would lack.

The connection the retry borrows is pinged first, as is every connection given
back before the failure (``backends.health.distrust_returned_connections``):
whatever killed one connection may have killed the idle ones with it.

Why more than one retry: a mass ``pg_terminate_backend`` or a failover ends
connections in waves, and the fresh connection a retry waited for can fall to
the next wave. Two retries bound the cost: a server that stays down fails the
retry's checkout (``DatabaseUnreachable``), which is not run again.

Each retry is counted (``CheckoutWatcher.query_retried``, the
``db_query_retries_total`` metric). A failure that is not run again (the last
retry's, or a retry's checkout that failed) is raised as it is; the earlier
ones are not kept.
"""

from __future__ import annotations

from django.db.backends.postgresql import compiler
from django.db.models.sql.constants import MULTI

from backends import health, instrumentation
from backends.errors import is_connection_error

__all__ = [
    "SQLAggregateCompiler",
    "SQLCompiler",
    "SQLDeleteCompiler",
    "SQLInsertCompiler",
    "SQLUpdateCompiler",
]


# How many times one read runs again, each time after its connection broke under it.
READ_RETRIES = 2


class RetryReadsMixin:
    """Run a read again when its connection broke under it (see the module docstring)."""

    def execute_sql(self, result_type=MULTI, *args, **kwargs):
        retries_left = READ_RETRIES
        while True:
            try:
                return super().execute_sql(result_type, *args, **kwargs)
            except Exception as exc:
                if retries_left == 0 or not self.may_run_again(exc):
                    raise
            retries_left -= 1
            # Whatever broke this connection (a restart, a mass kill) may be breaking the
            # idle ones too, faster than their sockets tell: the retry's is pinged first.
            health.distrust_returned_connections()
            instrumentation.query_retried(self.connection)

    def may_run_again(self, exc: Exception) -> bool:
        """Whether the read that failed with `exc` can run again on another connection."""
        connection = self.connection
        return (
            is_connection_error(exc)
            and not connection.in_atomic_block
            # Given back: nothing else was open on the dead connection, nothing
            # of it is left in this wrapper. (A wrapper that kept it, with a
            # cursor or session state on it, would run the retry on it again.)
            and connection.connection is None
        )


class SQLCompiler(RetryReadsMixin, compiler.SQLCompiler):
    pass


class SQLAggregateCompiler(RetryReadsMixin, compiler.SQLAggregateCompiler):
    pass


# Writes run once, as stock Django runs them: whether a write that failed with
# its connection reached the server cannot be known.
SQLInsertCompiler = compiler.SQLInsertCompiler
SQLDeleteCompiler = compiler.SQLDeleteCompiler
SQLUpdateCompiler = compiler.SQLUpdateCompiler
