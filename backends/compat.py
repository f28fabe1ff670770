"""Every place the engines reach into Django, psycopg_pool, django-db-connection-pool or SQLAlchemy
past their public API.

The engines override the hooks Django documents for backend authors
(``get_new_connection``, ``_close``, ``_cursor``, ``_set_autocommit``,
``make_cursor``) like any backend does. Everything else they need from another
library's insides is read or written here, and only here, so that a release of
one of them that renames or drops something breaks one module, and
``tests/test_compat.py`` says which line.

Django (``django.db.backends.base.base`` and ``postgresql.base``):
    ``DatabaseWrapper._connection_pools``   the per-alias psycopg pools, shared by all threads
    ``DatabaseWrapper._configure_connection``  sets the time zone and role on a new connection
    ``DatabaseWrapper._configure_role``   the role part of it, replaced (``RoleSetOnTheConnectionMixin``)
    ``BaseDatabaseWrapper._prepare_cursor``   wraps a new driver cursor (the end of ``_cursor()``)
    the attributes ``BaseDatabaseWrapper.connect()`` resets before connecting
    (``errors_occurred``, ``health_check_done``, ``close_at``, ``run_on_commit``, ...)

Django (``django.http.response``), for the metrics app:
    ``HttpResponseBase._resource_closers``   what ``close()`` calls before it sends
    ``request_finished`` (``call_when_closing``)

psycopg_pool:
    ``ConnectionPool._check``   the check run on each getconn (a constructor argument only)
    ``ConnectionPool._pool`` and ``_lock``   the idle connections, taken oldest first
    ``AttemptWithBackoff.INITIAL_DELAY``, ``DELAY_BACKOFF``   the wait between reconnection
    attempts (class attributes: the same for every pool in the process)

django-db-connection-pool:
    ``dj_db_conn_pool.core.pool_container`` and its ``lock``: the per-alias QueuePools
    ``PGDatabaseWrapperMixin.SQLAlchemyDialect``: the dialect its QueuePools are given
    QueuePool's ``_pool.use_lifo``, a constructor argument the library does not pass on
    ``connection.info = driver_connection.info``: how it lets Django read psycopg's info
"""

from __future__ import annotations

import time
from collections import deque

from django.db.backends.postgresql.base import DatabaseWrapper as PostgresWrapper
from psycopg import sql

# Django ---------------------------------------------------------------------------


def call_when_closing(response, callback) -> None:
    """Have `response.close()` call `callback()` in its own thread and context, before request_finished.

    Under ASGI, Django sends request_finished from response.close(), run in a
    context copied from outside the task that ran the middleware: a context
    variable set there is not seen by request_finished's receivers. A callback
    run by close() can set it again where they run.
    """
    response._resource_closers.append(callback)


def native_pools() -> dict:
    """Django's psycopg pools by alias (a class attribute, so one dict for every wrapper and thread)."""
    return PostgresWrapper._connection_pools


def configure_connection(wrapper, connection) -> bool:
    """Give a driver connection Django's time zone and role; True when that ran SQL to commit."""
    return wrapper._configure_connection(connection)


class RoleSetOnTheConnectionMixin:
    """OPTIONS["assume_role"] set with the connection being configured, and nothing else.

    Django composes its ``SET ROLE`` with ``ops.compose_sql()``, which borrows a
    cursor of the wrapper (``self.connection``). psycopg_pool configures a new
    connection in its own worker thread while the wrapper is still waiting for
    one, so that cursor asks the same pool for a second connection: with
    ``assume_role`` and Django's pool, stock Django waits out the pool timeout
    (Django 5.2 to 6.1). A release engine configures connections far more often
    (after each session reset too), with the wrapper in any state. The statement
    is the same; psycopg composes it on the connection it runs on.
    """

    def _configure_role(self, connection) -> bool:
        role = self.settings_dict["OPTIONS"].get("assume_role")
        if not role:
            return False
        with connection.cursor() as cursor:
            cursor.execute(sql.SQL("SET ROLE {}").format(sql.Literal(role)))
        return True


def reset_state_as_connect_does(wrapper) -> None:
    """What ``BaseDatabaseWrapper.connect()`` does to the wrapper before it asks for a connection.

    The release engines borrow again without the rest of ``connect()`` (the
    connection parameters, ``init_connection_state()``); this keeps the wrapper
    itself exactly as ``connect()`` would leave it. ``tests/test_compat.py``
    compares the two, attribute by attribute.
    """
    settings_dict = wrapper.settings_dict
    if settings_dict["TIME_ZONE"] is not None:  # all check_settings() checks (a call fewer per checkout)
        wrapper.check_settings()
    wrapper.in_atomic_block = False
    wrapper.savepoint_ids = []
    wrapper.atomic_blocks = []
    wrapper.needs_rollback = False
    wrapper.health_check_enabled = settings_dict["CONN_HEALTH_CHECKS"]
    max_age = settings_dict["CONN_MAX_AGE"]
    wrapper.close_at = None if max_age is None else time.monotonic() + max_age
    wrapper.closed_in_transaction = False
    wrapper.errors_occurred = False
    wrapper.health_check_done = True  # new connections are healthy; the pool checks what it hands out
    # connect() sets this after connecting; nothing in between reads it.
    wrapper.run_on_commit = []


def cursor_once_connected(wrapper, name=None):
    """What ``BaseDatabaseWrapper._cursor()`` does once ``ensure_connection()`` has returned.

    Errors are left to the caller to wrap (``wrapper.wrap_database_errors``).
    """
    return wrapper._prepare_cursor(wrapper.create_cursor(name))


# psycopg_pool ---------------------------------------------------------------------


def replace_pool_check(pool, current, replacement) -> None:
    """Swap the check psycopg_pool runs on every getconn(), if it is `current`."""
    if pool._check is current:
        pool._check = replacement


def pool_check(pool):
    return pool._check


class _NewestFirst(deque):
    """psycopg_pool's idle connections; it takes the next with popleft(): here, the newest."""

    popleft = deque.pop


def hand_out_newest_first(pool) -> None:
    """Make a psycopg pool hand out its most recently returned idle connection (LIFO), not its oldest.

    psycopg_pool keeps its idle connections in a deque, appends what comes back
    and takes from the left. Its shrinking after ``max_idle`` also takes from
    the left, so it now closes the newest idle connection rather than the
    oldest: one less all the same.
    """
    with pool._lock:
        if type(pool._pool) is not _NewestFirst:
            pool._pool = _NewestFirst(pool._pool)


def hands_out_newest_first(pool) -> bool:
    return type(pool._pool) is _NewestFirst


def reconnect_every(seconds: float) -> None:
    """Have psycopg_pool wait `seconds` (give or take a tenth) between attempts to reconnect, however many.

    Its own backoff doubles the wait after each failed attempt (1, 2, 4, 8,
    16 s...), so a pool can come back many seconds after the server did.
    Process-wide: psycopg_pool keeps the backoff on the class, not on a pool.
    """
    from psycopg_pool.base import AttemptWithBackoff

    AttemptWithBackoff.INITIAL_DELAY = seconds
    AttemptWithBackoff.DELAY_BACKOFF = 1.0


def reconnect_delays() -> tuple[float, float]:
    """psycopg_pool's first wait between reconnection attempts, and the factor for each next one."""
    from psycopg_pool.base import AttemptWithBackoff

    return AttemptWithBackoff.INITIAL_DELAY, AttemptWithBackoff.DELAY_BACKOFF


# django-db-connection-pool ---------------------------------------------------------

try:
    from dj_db_conn_pool.backends.postgresql.mixins import PGDatabaseWrapperMixin
    from dj_db_conn_pool.core import pool_container
except ImportError:  # optional: only the dj_db_conn_pool engines need it
    PGDatabaseWrapperMixin = pool_container = None


def queue_pool(alias: str):
    """The QueuePool django-db-connection-pool keeps for `alias`, or None before its first connection."""
    # dict.get: the container's own get() raises when the pool is missing.
    return dict.get(pool_container, alias)


def drop_queue_pool(alias: str):
    """Take `alias`'s QueuePool out of django-db-connection-pool's container; return it (or None)."""
    with pool_container.lock:
        return pool_container.pop(alias, None)


def hand_out_newest_first_from_queue_pool(pool) -> None:
    """QueuePool's ``use_lifo``, which django-db-connection-pool does not pass on from POOL_OPTIONS."""
    pool._pool.use_lifo = True


def queue_pool_hands_out_newest_first(pool) -> bool:
    return pool._pool.use_lifo


def queue_pool_defaults() -> dict:
    """The QueuePool arguments django-db-connection-pool uses where POOL_OPTIONS says nothing."""
    return pool_container.pool_default_params


def expose_driver_info(queue_pool_connection) -> None:
    """Let Django read ``connection.info`` (psycopg's) through QueuePool's proxy, as the library does.

    psycopg builds a new ConnectionInfo at each read of ``info``, a thin view
    of the connection: one per connection serves every checkout.
    """
    driver = queue_pool_connection.dbapi_connection
    info = getattr(driver, _INFO, None)
    if info is None:
        info = driver.info
        setattr(driver, _INFO, info)
    queue_pool_connection.info = info


_INFO = "_connection_release_info"
