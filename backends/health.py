"""Catch dead connections at checkout without a round trip on every checkout.

A connection that comes out of the pool may have died while it sat there: the
server restarted, an administrator ran ``pg_terminate_backend``, a firewall
dropped it. Pinging on every checkout catches that but costs a round trip per
checkout, and the release backends check out once per query.

So, like mature pools (HikariCP's ``aliveBypassWindowMs``), trust a connection
that went back to the pool moments ago, unless its socket already has something
to say: a server that ends a session sends an error and closes the socket, which
makes it readable. Anything older, or anything unknown, is pinged.

A connection that broke under a query is a sign that others may be breaking
too (a restart, a mass ``pg_terminate_backend``), more slowly than their sockets
show it: after ``distrust_returned_connections()``, every connection given back
before that moment is pinged before its next use, in this process.
"""

from __future__ import annotations

import ctypes
import functools
import select
from collections.abc import Callable
from time import monotonic

# A connection returned less than this many seconds ago skips the ping.
TRUST_WINDOW_SECONDS = 0.5

# Kept on the driver connection itself, as psycopg_pool keeps its own
# bookkeeping there: a lookup elsewhere (a weak-keyed mapping) costs more than
# the rest of the check, and this runs on every checkout.
_RETURNED_AT = "_connection_release_returned_at"
_POLL = "_connection_release_poll"


# Connections given back before this time.monotonic() are pinged whatever their age.
_distrusted_before = 0.0


def distrust_returned_connections() -> None:
    """Ping every connection given back until now before it is used again (a connection broke)."""
    global _distrusted_before
    _distrusted_before = monotonic()


def mark_returned(dbapi_connection) -> None:
    """Note that a driver connection is going back to its pool now."""
    setattr(dbapi_connection, _RETURNED_AT, monotonic())


def needs_ping(dbapi_connection) -> bool:
    """Whether a connection taken from the pool should be pinged before use."""
    returned_at = getattr(dbapi_connection, _RETURNED_AT, None)
    if (
        returned_at is None
        or returned_at < _distrusted_before
        or monotonic() - returned_at > TRUST_WINDOW_SECONDS
    ):
        return True
    # Recent: trust it unless its socket has something to say. An idle
    # connection has nothing to read; a terminated one has the server's goodbye
    # message or end-of-file waiting.
    poll = getattr(dbapi_connection, _POLL, None)
    if poll is None:
        try:
            fd = dbapi_connection.fileno()
        except Exception:  # closed or broken: let the ping decide
            return True
        poll = poller(fd)
        # A connection keeps its socket for life (a closed one never leaves the pool again).
        setattr(dbapi_connection, _POLL, poll)
    return poll() != 0


class _PollFd(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_int), ("events", ctypes.c_short), ("revents", ctypes.c_short)]


try:
    # The C library's poll(), called through PyDLL so that the call keeps the
    # interpreter lock. select.poll() lets other threads run while the kernel
    # answers, even with a zero timeout, and under load the thread then waits
    # its turn to run again, for milliseconds, holding a connection the pool
    # has already handed over. A zero-timeout poll() returns at once.
    _libc_poll = ctypes.PyDLL(None).poll
except (AttributeError, OSError, TypeError):  # no poll() there (Windows)
    _libc_poll = None


def poller(fd: int) -> Callable[[], int]:
    """A call that answers 0 when socket `fd` has nothing waiting, anything else when it has.

    poll() returns 1 when the socket is readable (data, end-of-file), 0 when
    not, -1 on an error (a bad descriptor): all but 0 mean "ping it". The
    structure poll() reads is built once per connection and reused: building
    it and its pointer cost twice what the call itself does.
    """
    if _libc_poll is None:
        return lambda: len(select.select([fd], [], [], 0)[0])
    return functools.partial(_libc_poll, ctypes.byref(_PollFd(fd, select.POLLIN | select.POLLPRI, 0)), 1, 0)


def socket_readable(fd: int) -> bool:
    """Whether a socket has data or end-of-file waiting (or an error), without blocking."""
    return poller(fd)() != 0
