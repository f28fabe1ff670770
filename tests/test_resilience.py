"""Dead connections: what the engines tell a 503 handler, and what they recover from on their own."""

from __future__ import annotations

import threading

import psycopg
import pytest
from django.contrib.auth.models import Group
from django.db import DatabaseError, OperationalError, connections, transaction

from backends.errors import (
    CONNECTION_LOST,
    DATABASE_UNREACHABLE,
    POOL_EXHAUSTED,
    is_connection_error,
    transient_cause,
)
from backends.pool import DatabaseUnreachable, PoolExhausted
from tests.conftest import Worker, backend_pid

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def terminate(pid: int) -> None:
    """Kill a server session from another connection, and wait until it is gone."""
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])
        assert cursor.fetchone() == (True,)


def nowhere_conninfo(tmp_path) -> str:
    """A socket folder where no server listens: connecting fails at once."""
    return f"host={tmp_path} port=5432 dbname=shop user=postgres connect_timeout=2"


# What a 503 handler is told --------------------------------------------------------


def test_a_connection_terminated_under_a_transaction_reads_as_lost_mid_request(database):
    alias = database()
    with pytest.raises(OperationalError) as failure, transaction.atomic(using=alias):
        Group.objects.using(alias).create(name="lost")
        terminate(backend_pid(alias))
        Group.objects.using(alias).create(name="never")

    assert transient_cause(failure.value) == CONNECTION_LOST
    assert is_connection_error(failure.value)


def test_a_server_that_refuses_connections_reads_as_unreachable(tmp_path):
    with pytest.raises(psycopg.OperationalError) as failure:
        psycopg.connect(nowhere_conninfo(tmp_path))

    assert transient_cause(failure.value) == DATABASE_UNREACHABLE
    assert not is_connection_error(failure.value)


def test_a_pool_whose_connections_are_all_out_reads_as_exhausted(database):
    alias = database(max_size=1, timeout=0.2)
    taken, done = threading.Event(), threading.Event()

    def hold_the_only_connection() -> None:
        with transaction.atomic(using=alias):
            Group.objects.using(alias).count()
            taken.set()
            done.wait(10)

    holder = Worker(hold_the_only_connection)
    holder.start()
    assert taken.wait(10)
    try:
        with pytest.raises(PoolExhausted) as failure:
            Group.objects.using(alias).count()
    finally:
        done.set()
        holder.finish()

    assert transient_cause(failure.value) == POOL_EXHAUSTED
    assert not is_connection_error(failure.value)


def test_the_engines_errors_name_their_cause():
    assert transient_cause(PoolExhausted("every connection is checked out")) == POOL_EXHAUSTED
    assert transient_cause(DatabaseUnreachable("connection refused")) == DATABASE_UNREACHABLE
    # Both are OperationalErrors, so code that catches Django's class still catches them.
    assert issubclass(PoolExhausted, OperationalError)
    assert issubclass(DatabaseUnreachable, OperationalError)


def test_a_cause_is_found_behind_the_exception_that_wraps_it():
    try:
        try:
            raise DatabaseUnreachable("connection refused")
        except DatabaseError as exc:
            raise RuntimeError("while rendering the page") from exc
    except RuntimeError as wrapped:
        assert transient_cause(wrapped) == DATABASE_UNREACHABLE


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1 / 0",  # a bug
        "SET LOCAL statement_timeout = 10; SELECT pg_sleep(1)",  # slow, but the connection is fine
    ],
)
def test_errors_that_leave_the_connection_healthy_have_no_transient_cause(database, sql):
    alias = database()
    with (
        pytest.raises(DatabaseError) as failure,
        transaction.atomic(using=alias),
        connections[alias].cursor() as cursor,
    ):
        cursor.execute(sql)

    assert transient_cause(failure.value) is None
    assert not is_connection_error(failure.value)
    assert transient_cause(ValueError("not a database error")) is None
