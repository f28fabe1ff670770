"""Assertions for a project's own tests: a connection given back before a slow call, checkouts counted.

    from backends.testing import assert_no_connection_held, count_checkouts, releases_connection

    # The view must give its connection back before it calls the carrier:
    with mock.patch("shop.carrier.estimate", releases_connection(fake_estimate)):
        client.get("/orders/1/delivery/")

    with count_checkouts() as checkouts:  # as assertNumQueries counts queries
        client.get("/products/")
    assert checkouts.count == 2

Every helper refuses to run inside ``atomic()``, with an error that says so
(``InsideAtomicBlock``), rather than pass or fail for the wrong reason: no
engine gives a connection back inside a transaction, and Django's ``TestCase``
runs each test inside one. Use ``TransactionTestCase`` (pytest-django:
``@pytest.mark.django_db(transaction=True)``).

They work on every engine of this package: on the release engines a view that
closes its cursors passes, and on the baseline engines (stock Django's
behaviour) the same view fails, as it holds its connection to the end of the
request.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.db import DEFAULT_DB_ALIAS, connections

from backends import instrumentation


class InsideAtomicBlock(Exception):
    """A release assertion was asked inside atomic(), where no engine gives a connection back."""


def check_outside_atomic(using: str) -> None:
    wrapper = connections[using]
    if wrapper.in_atomic_block:
        raise InsideAtomicBlock(
            f"This runs inside atomic() on database {using!r}, where no engine gives a connection back "
            "before the transaction ends, so whether one is held says nothing about your code. "
            "Django's TestCase wraps every test in atomic(): use TransactionTestCase instead "
            "(pytest-django: @pytest.mark.django_db(transaction=True))."
        )
    if not hasattr(wrapper, "checkout"):
        raise TypeError(
            f"DATABASES[{using!r}] uses {wrapper.settings_dict['ENGINE']!r}, which does not report its "
            "checkouts: use one of the engines in backends/ (backends.release, or backends.baseline "
            "for stock Django's behaviour)."
        )


def assert_no_connection_held(using: str = DEFAULT_DB_ALIAS) -> None:
    """Fail unless this thread's connection for `using` is back in the pool now."""
    check_outside_atomic(using)
    if connections[using].connection is not None:
        raise AssertionError(
            f"A connection of database {using!r} is checked out here: a cursor is still open, "
            "session-level SQL pinned it, hold_connection() keeps it, or the engine keeps it to "
            "the end of the request (a baseline engine)."
        )


def releases_connection(func: Callable, using: str = DEFAULT_DB_ALIAS) -> Callable:
    """`func`, asserting first that no connection is held: a stand-in for a slow external call.

    An ``async def`` stand-in (an async client's call) is checked when it is
    awaited, on the thread that runs the request's queries.
    """
    if iscoroutinefunction(func):

        @functools.wraps(func)
        async def awaited_without_a_connection(*args, **kwargs):
            await sync_to_async(assert_no_connection_held)(using)
            return await func(*args, **kwargs)

        return markcoroutinefunction(awaited_without_a_connection)

    @functools.wraps(func)
    def called_without_a_connection(*args, **kwargs):
        assert_no_connection_held(using)
        return func(*args, **kwargs)

    return called_without_a_connection


@contextmanager
def no_connection_held(using: str = DEFAULT_DB_ALIAS) -> Iterator[None]:
    """Fail if a connection is held when the block begins or when it ends."""
    assert_no_connection_held(using)
    yield
    assert_no_connection_held(using)


class CheckoutCounter(instrumentation.CheckoutWatcher):
    """The checkouts one thread makes of one database while it is watched."""

    def __init__(self, using: str) -> None:
        self.using = using
        self.thread = threading.get_ident()
        self.count = 0

    def checked_out(self, connection, wait_seconds: float) -> None:
        if connection.alias == self.using and threading.get_ident() == self.thread:
            self.count += 1


@contextmanager
def count_checkouts(using: str = DEFAULT_DB_ALIAS) -> Iterator[CheckoutCounter]:
    """How many times the block borrowed a connection of `using` (in this thread): `.count`."""
    check_outside_atomic(using)
    counter = CheckoutCounter(using)
    instrumentation.watch(counter)
    try:
        yield counter
    finally:
        instrumentation.unwatch(counter)
