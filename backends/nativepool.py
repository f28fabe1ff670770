"""Django's own connection pool (psycopg_pool), as used by the native engines."""

from __future__ import annotations

import inspect
from time import monotonic

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.base import NO_DB_ALIAS

from backends import compat, health
from backends.pool import PoolUsage, require_no_persistent_connections

try:
    from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImproperlyConfigured("Error loading psycopg_pool. Did you install psycopg[pool]?") from exc


def alive(conn) -> bool:
    """Whether a connection the pool handed out can be used: pinged only when it may be dead."""
    return not health.needs_ping(conn) or answers_ping(conn)


def answers_ping(conn) -> bool:
    try:
        ConnectionPool.check_connection(conn)
    except Exception:
        return False
    return True


def discard(pool: ConnectionPool, conn) -> None:
    """Give a dead connection back: the pool throws it away and opens another in the background."""
    conn.close()
    pool.putconn(conn)


# How psycopg_pool replaces a lost connection: in the background, one attempt
# after another, while requests wait in its queue. Its own backoff doubles the
# wait after each failure (1, 2, 4, 8, 16 s...): after a 15-second outage the
# pool served again 10 seconds after the server was back. Every half second
# instead, however long the outage (each failed attempt to a server that is
# down costs a refused connection), and for as long as RECONNECT_TIMEOUT_SECONDS
# (psycopg_pool's reconnect_timeout, unless OPTIONS["pool"] gives one) before
# it gives the slot up.
RECONNECT_EVERY_SECONDS = 0.5
RECONNECT_TIMEOUT_SECONDS = 3600.0


def configured_max_size(settings_dict) -> int:
    """The max_size psycopg_pool will give the pool OPTIONS["pool"] describes (its default: min_size)."""
    options = settings_dict["OPTIONS"].get("pool")
    options = options if isinstance(options, dict) else {}
    parameters = inspect.signature(ConnectionPool).parameters
    min_size = options.get("min_size", parameters["min_size"].default)
    return options.get("max_size") or min_size


def missing_pool(settings_dict, alias: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(
        f"DATABASES[{alias!r}] uses {settings_dict['ENGINE']!r}, which needs Django's "
        'connection pool: add "OPTIONS": {"pool": {"min_size": 1, "max_size": 4}} to it.'
    )


class NativePoolMixin:
    pool_name = "native"
    pool_timeout_error = PoolTimeout
    borrowed_from = None  # the pool the connection checked out now came from

    def __init__(self, settings_dict, alias="default") -> None:
        super().__init__(settings_dict, alias)
        if alias == NO_DB_ALIAS:  # Django's short-lived maintenance connection
            return
        require_no_persistent_connections(settings_dict, alias)
        # Without OPTIONS["pool"], refused at the first connection (get_new_connection()), not
        # here: stock Django and django-db-connection-pool build a wrapper from any settings
        # dict and refuse what they cannot do when they connect, and tools rely on that to
        # build one without connecting (Django's test runner renaming a test database, a check
        # reading a copied settings dict). `manage.py check` reports it (backends.E001), so a
        # project that runs its checks still learns at start.
        options = settings_dict["OPTIONS"].get("pool")
        if options:
            options = options if isinstance(options, dict) else {}  # `True`: psycopg_pool's defaults
            settings_dict["OPTIONS"]["pool"] = {"reconnect_timeout": RECONNECT_TIMEOUT_SECONDS, **options}

    @property
    def pool(self):
        # Read several times per checkout, so keep it once it is open. A pool
        # closed since (close_pool() from any thread) is looked up again.
        pool = self.__dict__.get("_open_pool")
        if pool is None or pool.closed:
            pool = super().pool
            if pool is not None:
                # Django builds the pool with a ping on every checkout when
                # CONN_HEALTH_CHECKS is on. On a dead connection psycopg_pool
                # would sleep a second (then two, four...) before taking the
                # next one, with the caller waiting: the engine checks what the
                # pool hands out itself (alive()), and takes the next at once.
                compat.replace_pool_check(pool, ConnectionPool.check_connection, None)
                # The most recently returned connection first: with one checkout
                # per query, oldest-first cycles through every connection, so
                # each one waits past the checkout check's trust window and is
                # pinged, and none stays idle long enough for max_idle to close
                # it (8 users: 0.83 pings per checkout and 8 connections in use,
                # against 0.03 and 2; backends/README.md).
                compat.hand_out_newest_first(pool)
                compat.reconnect_every(RECONNECT_EVERY_SECONDS)
                self._open_pool = pool
        return pool

    def get_new_connection(self, conn_params):
        started = monotonic()
        isolation_level = self.settings_dict["OPTIONS"].get("isolation_level")
        pool = self.__dict__.get("_open_pool")
        connection = None
        if pool is not None and isolation_level is None:
            # The pool of the last checkout, and no isolation level to set on
            # what it hands out: Django's version would look the pool up and
            # call pool.open(), which takes the pool's lock to find it open,
            # before this same getconn().
            try:  # noqa: SIM105 - contextlib.suppress() costs two calls per checkout
                connection = pool.getconn()
            except PoolClosed:  # closed since (close_pool(), in any thread), or not opened yet
                pass
        if connection is None:
            pool = self.pool
            if pool is None:  # no pool: Django connects
                # Only where that was meant: Django's maintenance connection, or a settings dict
                # that turns the pool off explicitly ("pool": False, as Django's own tests do to
                # get a connection of their own). Without the key, DATABASES forgot the pool.
                if self.alias != NO_DB_ALIAS and self.settings_dict["OPTIONS"].get("pool") is None:
                    raise missing_pool(self.settings_dict, self.alias)
                return super().get_new_connection(conn_params or self.checkout_params())
            connection = super().get_new_connection(conn_params)  # opens the pool, sets the isolation level
        self.borrowed_from = pool
        if not self.settings_dict["CONN_HEALTH_CHECKS"]:
            return connection
        # alive(), written out: a call fewer per checkout.
        while health.needs_ping(connection) and not answers_ping(connection):
            discard(pool, connection)
            # PoolTimeout once the pool's timeout has passed since the first ask.
            connection = pool.getconn(pool.timeout - (monotonic() - started))
            if isolation_level is not None:
                connection.isolation_level = self.isolation_level
        return connection

    def checkout_params(self) -> dict:
        """Parameters for get_new_connection(): none once the pool exists, which makes every connection."""
        # Django builds them on each checkout only to ignore them when pooling.
        if self.__dict__.get("_open_pool") is not None:
            return {}
        return self.get_connection_params()

    def _set_autocommit(self, autocommit: bool) -> None:
        # Django sets autocommit on every checkout; a pooled connection usually
        # already is in that mode, and psycopg's setter costs a microsecond or two
        # even when nothing changes.
        if self.connection.autocommit != autocommit:
            super()._set_autocommit(autocommit)

    def driver_connection(self):
        return self.connection

    def discard_connection(self) -> None:
        # psycopg_pool replaces a connection that comes back closed.
        self.connection.close()

    def _close(self) -> None:
        connection = self.connection
        # The pool it came from, as Django's _close() finds it (the pool may
        # have been replaced since, on a settings change in tests); a closed
        # one closes it.
        pool = self.borrowed_from
        if pool is None or connection is None:  # not a pooled connection, or nothing to close
            return super()._close()
        self.borrowed_from = None
        health.mark_returned(connection)
        # What Django's _close() does with a pooled connection, without
        # looking the pool up once more; this runs once per query, so errors
        # are wrapped as Django wraps them only when there is one.
        try:
            pool.putconn(connection)
        except self.Database.Error:
            with self.wrap_database_errors:
                raise
        self.connection = None

    def pool_usage(self) -> PoolUsage:
        pool = compat.native_pools().get(self.alias)  # Django's, shared by every thread
        if pool is None:
            # Not created yet, and asking must not create it: the size it will
            # have, as QueuePool's engines say, so that a site that has served
            # nothing yet does not report a pool of 0 (the comparison reads it).
            return PoolUsage(size=0, max_size=configured_max_size(self.settings_dict), idle=0)
        stats = pool.get_stats()
        return PoolUsage(
            size=stats["pool_size"],
            max_size=stats["pool_max"],
            idle=stats["pool_available"],
            waiting=stats.get("requests_waiting", 0),
        )

    def close_pool(self) -> None:
        self.__dict__.pop("_open_pool", None)
        # Django's close_pool() also runs on every time-zone change in tests.
        if self.alias in compat.native_pools():
            super().close_pool()
