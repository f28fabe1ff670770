"""Name the transient database trouble behind an exception, for a 503 and its log line.

``transient_cause(exc)`` answers one of three causes, or None when the error is
not a passing one (a bad query, a constraint, a bug) and deserves its 500:

``POOL_EXHAUSTED`` ("pool exhausted")
    Every connection was checked out for the whole pool timeout:
    ``backends.pool.PoolExhausted`` (or the pool's own ``psycopg_pool.PoolTimeout``,
    ``psycopg_pool.TooManyRequests``, ``sqlalchemy.exc.TimeoutError`` when an
    exception escapes untranslated).
``DATABASE_UNREACHABLE`` ("database unreachable")
    The pool cannot open connections: ``backends.pool.DatabaseUnreachable``, a
    failed connect (psycopg's "connection failed: ...", a connect timeout), or
    a server that is starting, stopping or full (SQLSTATE 57P03, 53300).
``CONNECTION_LOST`` ("connection lost mid-request")
    A connection broke under a query: the server closed it, an administrator
    terminated the backend (57P01), the server crashed (57P02), a network error
    (SQLSTATE class 08, or libpq's own errors, which carry no SQLSTATE).

Each of these is worth answering with 503 and ``Retry-After``. A view can
``except django.db.OperationalError`` and ask; a middleware asks of every
exception. ``is_connection_error(exc)`` is the narrower question the release
engines ask before retrying a read: did the connection itself fail?
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg

from backends.pool import DatabaseUnreachable, PoolExhausted

POOL_EXHAUSTED = "pool exhausted"
DATABASE_UNREACHABLE = "database unreachable"
CONNECTION_LOST = "connection lost mid-request"

# SQLSTATEs of errors that end the connection, or say that none can be opened.
_CONNECTION_LOST_STATES = frozenset({"57P01", "57P02"})  # admin_shutdown, crash_shutdown
_UNREACHABLE_STATES = frozenset({"57P03", "53300"})  # cannot_connect_now, too_many_connections


def _exhausted_errors() -> tuple[type[BaseException], ...]:
    """PoolExhausted, and the pools' own "no connection free" exceptions, of the pools installed."""
    found: list[type[BaseException]] = [PoolExhausted]
    try:
        from psycopg_pool import PoolTimeout, TooManyRequests
    except ImportError:  # pragma: no cover - depends on the environment
        pass
    else:
        found += [PoolTimeout, TooManyRequests]
    try:
        from sqlalchemy.exc import TimeoutError as QueuePoolTimeout
    except ImportError:  # pragma: no cover - depends on the environment
        pass
    else:
        found.append(QueuePoolTimeout)
    return tuple(found)


_EXHAUSTED = _exhausted_errors()


def chain(exc: BaseException | None) -> Iterator[BaseException]:
    """The exception, then what caused it (``raise ... from``), then what it interrupted."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _cause_of_driver_error(error: psycopg.OperationalError) -> str | None:
    if isinstance(error, psycopg.errors.ConnectionTimeout):
        return DATABASE_UNREACHABLE
    state = error.sqlstate
    if state in _UNREACHABLE_STATES:
        return DATABASE_UNREACHABLE
    if state is None and error.pgconn is not None:
        # Only psycopg's connect attaches the half-open connection to its error:
        # "connection failed: ...", "connection is bad: ...".
        return DATABASE_UNREACHABLE
    if state is None or state.startswith("08") or state in _CONNECTION_LOST_STATES:
        # libpq's own errors (no SQLSTATE): "server closed the connection
        # unexpectedly", "consuming input failed", "the connection is closed".
        return CONNECTION_LOST
    return None  # a statement timeout, a lock timeout, a deadlock: the connection is fine


def transient_cause(exc: BaseException) -> str | None:
    """POOL_EXHAUSTED, DATABASE_UNREACHABLE or CONNECTION_LOST if `exc` comes from one, else None."""
    for error in chain(exc):
        if isinstance(error, _EXHAUSTED):
            return POOL_EXHAUSTED
        if isinstance(error, DatabaseUnreachable):
            return DATABASE_UNREACHABLE
        if isinstance(error, psycopg.OperationalError):
            return _cause_of_driver_error(error)
    return None


def is_connection_error(exc: BaseException) -> bool:
    """Whether `exc` says that the connection a query ran on broke under it."""
    for error in chain(exc):
        if isinstance(error, (*_EXHAUSTED, DatabaseUnreachable)):
            return False
        if isinstance(error, psycopg.OperationalError):
            return _cause_of_driver_error(error) == CONNECTION_LOST
    return False
