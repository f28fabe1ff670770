"""What every pooled engine exposes, whichever pool is underneath."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

from django.core.exceptions import ImproperlyConfigured
from django.db import OperationalError


class PoolExhausted(OperationalError):
    """No connection came free within the pool's timeout.

    Raised by every engine in place of the pool's own exception
    (``psycopg_pool.PoolTimeout`` or ``sqlalchemy.exc.TimeoutError``), so a
    view or middleware can catch one class; the pool's exception is its
    ``__cause__``.

    It is not also a ``psycopg_pool.PoolTimeout``: stock Django already turns
    that (a psycopg error) into a plain ``django.db.OperationalError`` as it
    leaves ``ensure_connection()``, so ``except PoolTimeout`` never caught a
    pool timeout from a query. A class that were both would meet the same
    fate and lose its name on the way.
    """


class DatabaseUnreachable(OperationalError):
    """The pool could not open a connection: the server is down, restarting or refusing.

    Raised by every engine in place of a pool timeout while the pool's own
    attempts to connect are failing (it would otherwise read as an exhausted
    pool), and in place of a failed connect. ``backends.errors.transient_cause``
    tells it apart from ``PoolExhausted`` and from a connection lost mid-request.
    """


@dataclass(frozen=True)
class PoolUsage:
    """What a pool looks like right now."""

    size: int  # connections open (idle + checked out)
    max_size: int
    idle: int  # waiting in the pool, ready to be borrowed
    waiting: int = 0  # callers queued for a connection, when the pool tells

    @property
    def checked_out(self) -> int:
        return self.size - self.idle


class PoolMixin(Protocol):
    """What a pool mixin (``NativePoolMixin``, ``QueuePoolMixin``) gives the layers above it.

    It also overrides ``get_new_connection()`` (take a connection from the pool)
    and ``_close()`` (give it back), which every Django backend has.
    ``backends.checkout.check_engine_layers`` refuses an engine whose pool layer
    lacks one of these.
    """

    pool_name: ClassVar[str]  # the `pool` label of the metrics
    pool_timeout_error: ClassVar[type[Exception]]  # what the pool raises when none comes free

    def checkout_params(self) -> dict:
        """What to connect with when borrowing again must create the pool (or connect without one).

        Borrowing again passes no parameters to get_new_connection(): a pool
        that exists has them.
        """

    def driver_connection(self):
        """The psycopg connection of the connection checked out now."""

    def discard_connection(self) -> None:
        """Close the connection checked out now, so that the pool replaces it rather than reuse it."""

    def pool_usage(self) -> PoolUsage:
        """The pool of this alias now, without creating it."""

    def close_pool(self) -> None:
        """Close this alias's pool; connections still checked out are closed when given back."""


# What check_engine_layers() looks for on a pool layer: the protocol's attributes and methods.
POOL_MIXIN_MEMBERS = (*PoolMixin.__annotations__, *(n for n in vars(PoolMixin) if not n.startswith("_")))


def require_no_persistent_connections(settings_dict: dict, alias: str) -> None:
    max_age = settings_dict.get("CONN_MAX_AGE", 0)
    if max_age != 0:
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}]['CONN_MAX_AGE'] is {max_age!r}, but "
            f"{settings_dict['ENGINE']!r} hands connections back to a pool: persistent "
            "connections would keep them out of it. Set CONN_MAX_AGE to 0 (the default)."
        )
