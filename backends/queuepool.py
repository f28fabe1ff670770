"""django-db-connection-pool (SQLAlchemy's QueuePool), as used by the dj_db_conn_pool engines."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.base import NO_DB_ALIAS
from psycopg import IsolationLevel
from psycopg.pq import TransactionStatus

from backends import compat, health
from backends.pool import PoolUsage, require_no_persistent_connections

try:
    from dj_db_conn_pool.backends.postgresql.base import DatabaseWrapper as PooledDatabaseWrapper
    from dj_db_conn_pool.backends.postgresql.mixins import PGDatabaseWrapperMixin
    from sqlalchemy.exc import TimeoutError as QueuePoolTimeout
except ImportError as exc:
    raise ImproperlyConfigured(
        "This engine needs django-db-connection-pool. Install it with "
        "`pip install 'django-db-connection-pool[postgresql]'`, or use an engine on Django's own "
        "pool (backends.release or backends.baseline)."
    ) from exc


# Kept on the psycopg connection, as backends.health keeps its timestamp there:
# the time zone it was configured for (None too: TIME_ZONE = None, USE_TZ = False).
_CONFIGURED = "_connection_release_configured"
_NOT_CONFIGURED = object()
# Set on a QueuePool that close_pool() took out of use.
_DISPOSED = "_connection_release_disposed"


class QueuePoolMixin:
    """QueuePool's proxy of a connection is what Django sees as ``self.connection``.

    Its ``dbapi_connection`` is the psycopg connection: with a synchronous
    driver the same object as ``driver_connection``, without two property
    look-ups.
    """

    pool_name = "dj_db_conn_pool"
    pool_timeout_error = QueuePoolTimeout

    class SQLAlchemyDialect(PGDatabaseWrapperMixin.SQLAlchemyDialect):
        def do_ping(self, dbapi_connection) -> bool:
            # QueuePool's pre_ping calls this on every checkout; skip the round
            # trip for a connection that is known to be alive.
            if not health.needs_ping(dbapi_connection):
                return True
            return super().do_ping(dbapi_connection)

        def do_rollback(self, dbapi_connection) -> None:
            # QueuePool rolls back every connection it gets back. A connection
            # in autocommit, the usual case here, has nothing to roll back, and
            # psycopg's rollback() still takes its lock and runs its machinery.
            # This gets QueuePool's proxy, or the bare psycopg connection when
            # a proxy is garbage-collected: libpq's status reads the same on both.
            if dbapi_connection.pgconn.transaction_status != TransactionStatus.IDLE:
                super().do_rollback(dbapi_connection)

    def __init__(self, settings_dict, alias="default") -> None:
        super().__init__(settings_dict, alias)
        self.borrowed_from = None  # the QueuePool of the connection checked out now, or of the last one
        if alias == NO_DB_ALIAS:
            return
        require_no_persistent_connections(settings_dict, alias)
        if settings_dict["OPTIONS"].get("pool"):
            raise ImproperlyConfigured(
                f"DATABASES[{alias!r}] uses {settings_dict['ENGINE']!r}, which pools with "
                "SQLAlchemy's QueuePool (sized by POOL_OPTIONS): remove OPTIONS['pool'], or "
                "use the native engine."
            )

    def get_new_connection(self, conn_params):
        isolation_level = self.settings_dict["OPTIONS"].get("isolation_level")
        if isolation_level is not None:
            # Django checks the option when it connects, which QueuePool does
            # only to open a new connection: check it before every checkout. A
            # pooled connection keeps the level it was opened with.
            self.isolation_level = valid_isolation_level(isolation_level)
        pool = self.borrowed_from
        if pool is None or getattr(pool, _DISPOSED, False):
            pool = self.queue_pool
        if pool is None:
            # The first checkout, or the first since close_pool():
            # django-db-connection-pool creates the pool.
            connection = super().get_new_connection(conn_params or self.checkout_params())
            pool = self.queue_pool
            # The most recently returned connection first, as on the native pool
            # (8 users: 0.79 pings per checkout and 8 connections in use, against
            # 0.07 and 3; backends/README.md).
            compat.hand_out_newest_first_from_queue_pool(pool)
        else:
            # django-db-connection-pool would take its process-wide lock only to
            # find the pool there, then do exactly this.
            connection = pool.connect()
            compat.expose_driver_info(connection)
        # Whichever way it came: a released wrapper borrows again without
        # init_connection_state(), so this is where a new connection is configured.
        if getattr(connection.dbapi_connection, _CONFIGURED, _NOT_CONFIGURED) != self.timezone_name:
            self.configure_once(connection)
        # Kept after the connection goes back: the next checkout asks the same pool.
        self.borrowed_from = pool
        return connection

    def configure_once(self, connection) -> None:
        """Set the time zone and role on a connection QueuePool opened since the last connect().

        Django sets them in connect() (init_connection_state()), which a
        release engine runs only for a thread's first checkout; QueuePool opens
        its connections without them. psycopg_pool has a ``configure`` hook for
        this, QueuePool does not, so each connection is marked with the time
        zone it got (the TIME_ZONE setting may change, in tests). A connection
        that cannot be configured is thrown away.
        """
        dbapi_connection = connection.dbapi_connection
        # With a role, stock Django composes its SET ROLE with a cursor of the
        # wrapper (the baseline engine; the release engines set the role on the
        # connection itself): that cursor must use this connection, not borrow another.
        previous, self.connection = self.connection, connection
        try:
            if compat.configure_connection(self, connection) and not dbapi_connection.autocommit:
                dbapi_connection.commit()
        except BaseException:
            connection.invalidate()
            raise
        finally:
            self.connection = previous
        setattr(dbapi_connection, _CONFIGURED, self.timezone_name)

    def checkout_params(self) -> dict:
        """Parameters for get_new_connection(), which creates the pool with them if it is missing."""
        # Built once per connection object: they only change with the settings,
        # and a settings change (the time zone, in tests) closes the pool.
        params = self.__dict__.get("_checkout_params")
        if params is None:
            params = self._checkout_params = self.get_connection_params()
        return params

    def _set_autocommit(self, autocommit: bool) -> None:
        # As in NativePoolMixin: skip psycopg's setter when nothing changes.
        if self.connection.dbapi_connection.autocommit != autocommit:
            super()._set_autocommit(autocommit)

    def driver_connection(self):
        return self.connection.dbapi_connection

    def discard_connection(self) -> None:
        # QueuePool opens a new connection in place of an invalidated one.
        self.connection.invalidate()

    def _close(self) -> None:
        connection = self.connection
        if connection is None:
            return
        dbapi_connection = connection.dbapi_connection  # None once invalidated
        if dbapi_connection is not None and dbapi_connection.closed:
            # Broken under a query (a terminated backend, a restart): QueuePool
            # would roll it back, fail, and log the traceback as an error.
            # Throw it away; the next checkout connects anew.
            with self.wrap_database_errors:
                self.discard_connection()
            return
        if getattr(self.borrowed_from, _DISPOSED, False):
            # Its pool was closed (close_pool()) while this was out. QueuePool
            # would take it back into the discarded pool, where it would stay
            # open until garbage-collected: close it now.
            self.discard_connection()
        elif dbapi_connection is not None:
            health.mark_returned(dbapi_connection)
        # What Django's _close() does with a connection it does not pool
        # itself, without first asking for its own (absent) pool; closing
        # QueuePool's proxy gives the connection back to QueuePool. Errors
        # are wrapped as Django wraps them, only when there is one.
        try:
            connection.close()
        except self.Database.Error:
            with self.wrap_database_errors:
                raise

    @property
    def queue_pool(self):
        """The SQLAlchemy pool of this alias, or None before the first connection."""
        return compat.queue_pool(self.alias)

    def pool_usage(self) -> PoolUsage:
        pool = self.queue_pool
        # django-db-connection-pool honours upper-case keys only.
        options = {k.lower(): v for k, v in self.settings_dict.get("POOL_OPTIONS", {}).items() if k.isupper()}
        defaults = compat.queue_pool_defaults()
        max_size = options.get("pool_size", defaults["pool_size"]) + options.get(
            "max_overflow", defaults["max_overflow"]
        )
        if pool is None:
            return PoolUsage(size=0, max_size=max_size, idle=0)
        return PoolUsage(
            size=pool.checkedin() + pool.checkedout(),
            max_size=max_size,
            idle=pool.checkedin(),
        )

    def close_pool(self) -> None:
        self.__dict__.pop("_checkout_params", None)
        pool = compat.drop_queue_pool(self.alias)
        if pool is not None:
            setattr(pool, _DISPOSED, True)
            pool.dispose()


def valid_isolation_level(value) -> IsolationLevel:
    """OPTIONS["isolation_level"] as psycopg's IsolationLevel, refused as Django refuses it."""
    try:
        return IsolationLevel(value)
    except ValueError:
        raise ImproperlyConfigured(
            f"Invalid transaction isolation level {value} specified. Use one of the "
            "psycopg.IsolationLevel values."
        ) from None


__all__ = ["PooledDatabaseWrapper", "QueuePoolMixin"]
