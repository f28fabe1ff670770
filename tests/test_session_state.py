"""Session state stays with the code that set it and never reaches the next borrower.

A pool of one and two threads: whatever the first request leaves on its server
session, the second, on the very same session (same pg_backend_pid()), must not see.
"""

from __future__ import annotations

import gc
import logging
from datetime import UTC, datetime
from unittest import mock

import pytest
from django.contrib.auth.models import Group
from django.core.signals import request_finished
from django.db import OperationalError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import CharField, F, Func, Value

from backends import session
from backends.pool import PoolExhausted
from backends.release import hold_connection
from loadtests.measure import Scrape
from tests.conftest import POOL, Worker, backend_pid, holding, usage

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def end_of_request() -> None:
    """What Django does when a response has been sent (close_old_connections)."""
    request_finished.send(sender=None)


def run(alias: str, sql: str, params=None) -> None:
    with connections[alias].cursor() as cursor:
        cursor.execute(sql, params)


def value(alias: str, sql: str, params=None):
    with connections[alias].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()[0]


def in_another_thread(function):
    worker = Worker(function, "next-borrower")
    worker.start()
    result = worker.finish()
    assert worker.error is None, worker.error
    return result


# Each kind of session state: the SQL that sets it, a query that reads it back,
# and what that query answers in this request after setting it.
SESSION_STATE = {
    "set": ("SET statement_timeout = '7s'", "SHOW statement_timeout", "7s"),
    "set search_path": ("SET search_path = pg_catalog", "SHOW search_path", "pg_catalog"),
    "set role": ("SET ROLE postgres", "SHOW role", "postgres"),
    "set time zone": ("SET TIME ZONE 'Asia/Kathmandu'", "SHOW TimeZone", "Asia/Kathmandu"),
    "reset": ("RESET client_min_messages", "SELECT 1", 1),
    "set_config": (
        "SELECT set_config('application_name', 'pinned-app', false)",
        "SHOW application_name",
        "pinned-app",
    ),
    "advisory lock": (
        "SELECT pg_advisory_lock(4242)",
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        1,
    ),
    "shared advisory lock": (
        "SELECT pg_try_advisory_lock_shared(4243)",
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        1,
    ),
    "temp table": (
        "CREATE TEMP TABLE scratch (x int)",
        "SELECT to_regclass('pg_temp.scratch') IS NOT NULL",
        True,
    ),
    "listen": ("LISTEN pinned_channel", "SELECT count(*) FROM pg_listening_channels()", 1),
    "prepare": (
        "PREPARE pinned_statement AS SELECT 1",
        "SELECT count(*) FROM pg_prepared_statements WHERE name = 'pinned_statement'",
        1,
    ),
    "cursor with hold": (
        "DECLARE pinned_cursor CURSOR WITH HOLD FOR SELECT 1",
        "SELECT count(*) FROM pg_cursors WHERE name = 'pinned_cursor'",
        1,
    ),
}


@pytest.mark.direct_connection
@pytest.mark.parametrize("kind", SESSION_STATE)
def test_session_state_lasts_the_request_and_never_reaches_the_next_borrower(database, kind):
    sql, check, in_request = SESSION_STATE[kind]
    alias = database(max_size=1)
    before = in_another_thread(lambda: value(alias, check))
    pid = backend_pid(alias)

    run(alias, sql)
    assert holding(alias), "kept with the code that set it"
    assert value(alias, check) == in_request
    assert value(alias, "SELECT 1") == 1
    assert holding(alias)
    assert backend_pid(alias) == pid, "every query of the request ran on the same session"

    end_of_request()
    assert not holding(alias)
    assert usage(alias).idle == 1

    next_pid, seen = in_another_thread(lambda: (backend_pid(alias), value(alias, check)))
    assert next_pid == pid, "a pool of one: the next borrower has the very same session..."
    assert seen == (before if kind != "reset" else 1), "...without the state the first one left"


def test_a_reset_session_has_djangos_time_zone_again(database):
    alias = database(max_size=1)
    run(alias, "SET TIME ZONE 'Asia/Kathmandu'")
    end_of_request()
    assert in_another_thread(lambda: value(alias, "SHOW TimeZone")) == connections[alias].timezone_name
    now = in_another_thread(lambda: value(alias, "SELECT '2026-01-01 00:00:00+00'::timestamptz"))
    assert now == datetime(2026, 1, 1, tzinfo=UTC)


def test_assume_role_is_set_on_every_connection_even_in_a_pool_of_one(database):
    """Stock Django's SET ROLE borrows a second connection while the pool configures the first.

    On Django's pool this waits out the pool timeout without the release engines' own
    _configure_role(); QueuePool's configure_once() lends the wrapper the connection it configures.
    """
    user = value("default", "SELECT session_user")
    alias = database(max_size=1, options={"assume_role": user})
    assert value(alias, "SHOW role") == user

    run(alias, "SET ROLE NONE")
    assert value(alias, "SHOW role") == "none"
    end_of_request()
    assert in_another_thread(lambda: value(alias, "SHOW role")) == user, "set again after the reset"

    connections[alias].close_pool()
    assert value(alias, "SHOW role") == user, "and on the new pool's first connection"


def test_an_advisory_lock_can_be_taken_by_another_session_once_the_request_ends(database):
    alias = database(max_size=1)
    run(alias, "SELECT pg_advisory_lock(4244)")
    taken_meanwhile = in_another_thread(lambda: value("default", "SELECT pg_try_advisory_lock(4244)"))
    assert taken_meanwhile is False, "the request holds the lock"

    end_of_request()

    assert in_another_thread(lambda: value("default", "SELECT pg_try_advisory_lock(4244)")) is True


def test_the_orm_works_for_the_next_borrower_after_a_search_path_change(database):
    alias = database(max_size=1)
    Group.objects.using(alias).create(name="visible")
    run(alias, "SET search_path = pg_catalog")
    end_of_request()
    assert in_another_thread(lambda: list(Group.objects.using(alias).values_list("name", flat=True))) == [
        "visible"
    ]


def test_a_plain_set_inside_atomic_outlives_the_commit_and_pins(database):
    alias = database(max_size=1)
    with transaction.atomic(using=alias):
        run(alias, "SET statement_timeout = '9s'")
        Group.objects.using(alias).create(name="committed")
    assert holding(alias), "the setting outlives the transaction, so the connection stays"
    assert value(alias, "SHOW statement_timeout") == "9s"
    end_of_request()
    assert in_another_thread(lambda: value(alias, "SHOW statement_timeout")) == "0"


# What never pins -------------------------------------------------------------------------------


def test_set_local_inside_atomic_does_not_pin(database):
    alias = database(max_size=1)
    with transaction.atomic(using=alias):
        run(alias, "SET LOCAL statement_timeout = '9s'")
        run(alias, "SELECT set_config('application_name', 'for-this-transaction', true)")
        assert value(alias, "SHOW statement_timeout") == "9s"
    assert not holding(alias)
    assert value(alias, "SHOW statement_timeout") == "0"


def test_transaction_level_advisory_locks_and_constraints_do_not_pin(database):
    alias = database(max_size=1)
    with transaction.atomic(using=alias):
        run(alias, "SELECT pg_advisory_xact_lock(4245)")
        run(alias, "SET CONSTRAINTS ALL IMMEDIATE")
        run(alias, "SET TRANSACTION READ WRITE")
    assert not holding(alias)


def test_orm_queries_with_session_sql_in_their_values_do_not_pin(database):
    alias = database(max_size=1)
    names = ["SET search_path = pg_catalog", "pg_advisory_lock(1)", "CREATE TEMP TABLE x ()", "LISTEN x"]
    for name in names:
        Group.objects.using(alias).create(name=name)
        assert not holding(alias)
    assert Group.objects.using(alias).filter(name__startswith="SET ").count() == 1
    assert Group.objects.using(alias).filter(name__contains="advisory_lock").exists()
    assert set(Group.objects.using(alias).filter(name__in=names).values_list("name", flat=True)) == set(names)
    Group.objects.using(alias).filter(name="LISTEN x").update(name="set_config('a', 'b', false)")
    assert not holding(alias)


def test_raw_selects_carrying_session_sql_as_values_do_not_pin(database):
    alias = database(max_size=1)
    assert value(alias, "SELECT 'SET x = 1'") == "SET x = 1"
    assert value(alias, "SELECT %s", ["SET search_path = pg_catalog"]) == "SET search_path = pg_catalog"
    assert value(alias, "SELECT %s::text", ["pg_advisory_lock(1)"]) == "pg_advisory_lock(1)"
    assert not holding(alias)


def test_an_orm_query_that_calls_a_lock_function_pins(database):
    """The ORM pins only when it really runs session-level SQL."""
    alias = database(max_size=1)
    Group.objects.using(alias).create(name="g")
    locked = Group.objects.using(alias).annotate(
        locked=Func(Value(4246), function="pg_advisory_lock", output_field=CharField())
    )
    assert [group.name for group in locked] == ["g"]
    assert holding(alias)
    end_of_request()
    assert in_another_thread(lambda: value("default", "SELECT pg_try_advisory_lock(4246)")) is True
    assert Group.objects.using(alias).filter(pk=F("pk")).count() == 1


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SET search_path = x", session.SET),
        ("  set   local statement_timeout = 1", None),
        ("/* tenant */ SET ROLE x", session.SET),
        ("-- note\nRESET ALL", session.SET),
        ("SET SESSION AUTHORIZATION DEFAULT", session.SET),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", session.SET),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", None),
        ("SELECT set_config('a', %s, %s)", session.SET),
        ("SELECT set_config('a', format('%%s', 'x'), true)", None),
        ("select PG_TRY_ADVISORY_LOCK_SHARED(1)", session.ADVISORY_LOCK),
        ("SELECT pg_advisory_unlock(1)", None),
        ("WITH l AS (SELECT pg_advisory_lock(1)) SELECT * FROM l", session.ADVISORY_LOCK),
        ("CREATE GLOBAL TEMPORARY TABLE t (x int)", session.TEMP),
        ("CREATE TABLE pg_temp.t (x int)", session.TEMP),
        ('CREATE TABLE "temp" ("id" int)', None),
        ("PREPARE TRANSACTION 'x'", None),
        ("DECLARE c CURSOR FOR SELECT 1", None),
        ("LOAD 'auto_explain'", session.LOAD),
        ("SELECT 1; SET search_path = x", session.SET),
        (b"LISTEN x", session.LISTEN),
        ("", None),
    ],
)
def test_which_statements_leave_session_state(sql, reason):
    assert session.session_state(sql) == reason


# hold_connection() -------------------------------------------------------------------------------


@pytest.mark.direct_connection
def test_hold_connection_keeps_one_session_without_a_transaction(database):
    alias = database(max_size=2)
    with hold_connection(using=alias):
        assert holding(alias)
        pid = backend_pid(alias)
        Group.objects.using(alias).create(name="committed-at-once")
        assert holding(alias)
        assert not connections[alias].in_atomic_block
        seen = in_another_thread(lambda: list(Group.objects.using(alias).values_list("name", flat=True)))
        assert seen == ["committed-at-once"], "no transaction: each statement committed on its own"
        assert backend_pid(alias) == pid
    assert not holding(alias)


@pytest.mark.direct_connection
def test_hold_connection_blocks_nest(database):
    alias = database(max_size=1)
    with hold_connection(using=alias):
        pid = backend_pid(alias)
        with hold_connection(using=alias):
            assert backend_pid(alias) == pid
        assert holding(alias), "the outer block still holds it"
        assert backend_pid(alias) == pid
    assert not holding(alias)


@pytest.mark.direct_connection
def test_hold_connection_works_as_a_decorator(database):
    alias = database(max_size=1)

    @hold_connection(using=alias)
    def two_queries() -> tuple[int, int]:
        return backend_pid(alias), backend_pid(alias)

    first, second = two_queries()
    assert first == second
    assert not holding(alias)
    assert two_queries()[0] == first


@pytest.mark.direct_connection
def test_session_state_inside_hold_connection_is_reset_when_the_block_ends(database):
    alias = database(max_size=1)
    with hold_connection(using=alias):
        pid = backend_pid(alias)
        run(alias, "SELECT pg_advisory_lock(4247)")
        run(alias, "SET statement_timeout = '8s'")
        assert value(alias, "SHOW statement_timeout") == "8s"
    assert not holding(alias), "given back at the end of the block, not at the end of the request"
    next_pid, timeout, locks = in_another_thread(
        lambda: (
            backend_pid(alias),
            value(alias, "SHOW statement_timeout"),
            value(alias, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"),
        )
    )
    assert (next_pid, timeout, locks) == (pid, "0", 0)


@pytest.mark.direct_connection
def test_hold_connection_on_the_default_alias(database):
    assert not holding("default")
    with hold_connection():
        assert holding("default")
        assert backend_pid("default") == backend_pid("default")


# Reset failures, metrics, diagnostics ---------------------------------------------------------------


@pytest.mark.direct_connection
def test_a_connection_whose_reset_fails_is_thrown_away(database, caplog):
    alias = database(max_size=1)
    run(alias, "SET statement_timeout = '6s'")
    pid = backend_pid(alias)
    assert value("default", "SELECT pg_terminate_backend(%s, 5000)", [pid]) is True

    with caplog.at_level(logging.WARNING, logger="backends.leaks"):
        end_of_request()

    assert any("resetting the session" in r.getMessage() for r in caplog.records)
    next_pid, timeout = in_another_thread(
        lambda: (backend_pid(alias), value(alias, "SHOW statement_timeout"))
    )
    assert next_pid != pid
    assert timeout == "0"


def test_pinned_checkouts_are_counted_by_reason(database, client):
    alias = database(max_size=1)
    labels = {"alias": alias, "engine": "release", "pool": POOL}

    def pinned(reason: str) -> float:
        return Scrape.parse(client.get("/metrics").content.decode()).total(
            "db_connections_pinned_total", reason=reason, **labels
        )

    before = {reason: pinned(reason) for reason in ("set", "advisory_lock", "hold_connection")}
    run(alias, "SET statement_timeout = '5s'")
    run(alias, "SET statement_timeout = '4s'")  # the same checkout counts once
    end_of_request()
    run(alias, "SELECT pg_advisory_lock(4248)")
    end_of_request()
    with hold_connection(using=alias), hold_connection(using=alias):
        run(alias, "SELECT 1")
    Group.objects.using(alias).count()

    assert pinned("set") == before["set"] + 1
    assert pinned("advisory_lock") == before["advisory_lock"] + 1
    assert pinned("hold_connection") == before["hold_connection"] + 1


def test_leak_diagnostics_say_where_session_sql_pinned_and_what_to_do(database, settings, caplog):
    settings.DB_LEAK_DIAGNOSTICS = True
    alias = database(max_size=1)
    with caplog.at_level(logging.WARNING, logger="backends.leaks"):
        run(alias, "SET search_path = public")
    [record] = [r for r in caplog.records if r.name == "backends.leaks"]
    message = record.getMessage()
    assert "(set)" in message
    assert "SET LOCAL" in message and "hold_connection()" in message
    assert "test_leak_diagnostics_say_where_session_sql_pinned_and_what_to_do" in message


def test_pinning_is_silent_without_leak_diagnostics(database, caplog):
    alias = database(max_size=1)
    with caplog.at_level(logging.WARNING, logger="backends.leaks"):
        run(alias, "SET search_path = public")
    assert [r for r in caplog.records if r.name == "backends.leaks"] == []


# Regressions -------------------------------------------------------------------------------------------


def test_the_configured_time_zone_survives_a_recreated_pool(database):
    """After close_pool() (on a TIME_ZONE/USE_TZ change, in gunicorn's post_fork), borrowing configures."""
    alias = database(max_size=1, options={"options": "-c TimeZone=Asia/Kathmandu"})
    assert value(alias, "SHOW TimeZone") == "UTC"
    assert not holding(alias)

    connections[alias].close_pool()

    assert value(alias, "SHOW TimeZone") == "UTC"
    assert value(alias, "SELECT '2026-01-01 00:00:00+00'::timestamptz") == datetime(2026, 1, 1, tzinfo=UTC)


def test_a_cursor_run_right_after_connecting_does_not_release_under_django(database):
    """An extension that runs setup SQL in ensure_connection(), outside connection_created."""
    alias = database(max_size=1)
    Group.objects.create(name="listed")  # on "default": the wrapper of `alias` connects below, first time
    wrapper = connections[alias]
    real_ensure_connection = wrapper.ensure_connection
    setup_queries = []

    def ensure_connection_with_setup():
        opening = wrapper.connection is None
        real_ensure_connection()
        if opening:
            with wrapper.cursor() as cursor:  # ensure_connection() is this function again: no recursion
                cursor.execute("SELECT 1")
                setup_queries.append(cursor.fetchone())

    with mock.patch.object(
        BaseDatabaseWrapper, "ensure_connection", side_effect=ensure_connection_with_setup
    ):
        assert list(Group.objects.using(alias).values_list("name", flat=True)) == ["listed"]
    assert setup_queries == [(1,)]
    assert not holding(alias)


@pytest.mark.direct_connection
def test_closing_the_pool_closes_a_connection_still_checked_out_when_it_comes_back(database):
    alias = database(max_size=1)
    pid = backend_pid(alias)

    gc.disable()  # a connection left to the garbage collector would close late, or never
    try:
        with transaction.atomic(using=alias):
            assert backend_pid(alias) == pid
            driver = connections[alias].driver_connection()
            connections[alias].close_pool()  # e.g. a time-zone change in a test, with this one out
        assert not holding(alias)
        assert driver.closed, "given back to a pool that is closed, so closed at once"
    finally:
        gc.enable()
    assert backend_pid(alias) != pid


@pytest.mark.skipif(POOL != "native", reason="psycopg_pool's PoolTimeout")
def test_an_exhausted_native_pool_raises_pool_exhausted_from_psycopg_pools_timeout(database):
    from psycopg_pool import PoolTimeout

    alias = database(max_size=1, timeout=0.2)
    with transaction.atomic(using=alias):
        Group.objects.using(alias).count()
        error = in_another_thread(lambda: _error_of(lambda: Group.objects.using(alias).count()))
    assert isinstance(error, PoolExhausted) and isinstance(error, OperationalError)
    assert isinstance(error.__cause__, PoolTimeout)


def _error_of(function) -> BaseException | None:
    try:
        function()
    except Exception as exc:  # noqa: BLE001 - handed to the test
        return exc
    return None
