"""Time every checkout the same way on every engine.

A checkout runs from the moment the pool hands a connection over to the moment
it is given back (``DatabaseWrapper.close()``); the wait is the time spent
inside the pool asking for it. psycopg_pool's own ``usage_ms`` stays at 0 under
Django, which borrows with ``getconn()`` rather than ``pool.connection()``, so
the engines keep their own clock.

Listeners subscribe to the signals below; the metrics app turns them into
Prometheus series and a per-request summary.
"""

from __future__ import annotations

from time import perf_counter

from django.dispatch import Signal

from backends.pool import PoolExhausted

# sender=DatabaseWrapper class; kwargs: connection, wait_seconds
connection_checked_out = Signal()
# sender=DatabaseWrapper class; kwargs: connection, hold_seconds
connection_returned = Signal()
# sender=DatabaseWrapper class; kwargs: connection, wait_seconds
pool_timed_out = Signal()


class InstrumentedMixin:
    """Measure hold and wait time of each checkout and turn pool timeouts into PoolExhausted."""

    release_engine = "baseline"  # overridden by ConnectionReleaseMixin

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.checked_out_at: float | None = None

    def get_new_connection(self, conn_params):
        started = perf_counter()
        try:
            connection = super().get_new_connection(conn_params)
        except self.pool_timeout_error as exc:
            waited = perf_counter() - started
            pool_timed_out.send(type(self), connection=self, wait_seconds=waited)
            raise PoolExhausted(
                f"No connection free in the {self.pool_name} pool of database {self.alias!r} "
                f"after {waited:.2f}s: every connection is checked out."
            ) from exc
        self.checked_out_at = now = perf_counter()
        connection_checked_out.send(type(self), connection=self, wait_seconds=now - started)
        return connection

    def _close(self) -> None:
        checked_out_at, self.checked_out_at = self.checked_out_at, None
        try:
            super()._close()
        finally:
            if checked_out_at is not None:
                connection_returned.send(
                    type(self), connection=self, hold_seconds=perf_counter() - checked_out_at
                )
