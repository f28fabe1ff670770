"""When the release engines give a connection back, and when they must not."""

from __future__ import annotations

import gc
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.contrib.auth.models import Group
from django.core.signals import request_finished
from django.db import connections, transaction
from django.db.backends.signals import connection_created
from psycopg import IsolationLevel

from backends import health
from tests.conftest import Worker, backend_pid, connection_held_in_another_thread, holding, usage

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def end_of_request() -> None:
    """What Django does when a response has been sent (close_old_connections)."""
    request_finished.send(sender=None)


# Django 6.1 renamed transaction.savepoint() to savepoint_create().
savepoint_create = getattr(transaction, "savepoint_create", transaction.savepoint)


def group_names(alias: str) -> set[str]:
    return set(Group.objects.using(alias).values_list("name", flat=True))


# Outside a transaction ---------------------------------------------------------


def test_closing_a_cursor_gives_the_connection_back(database):
    alias = database()
    cursor = connections[alias].cursor()
    cursor.execute("SELECT 1")
    assert holding(alias)
    assert usage(alias).checked_out == 1

    cursor.close()

    assert not holding(alias)
    assert usage(alias).checked_out == 0
    assert usage(alias).idle == 1


def test_leaving_a_cursor_block_gives_the_connection_back(database):
    alias = database()
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
        assert holding(alias)

    assert not holding(alias)
    assert usage(alias).checked_out == 0


def test_orm_query_gives_the_connection_back(database):
    alias = database()
    Group.objects.using(alias).create(name="staff")
    assert not holding(alias)

    assert Group.objects.using(alias).filter(name="staff").exists()
    assert not holding(alias)
    assert usage(alias).checked_out == 0


@pytest.mark.direct_connection
def test_next_query_borrows_a_connection_again(database):
    alias = database()
    first = backend_pid(alias)
    second = backend_pid(alias)
    # A pool of one: the same server connection comes back, borrowed twice.
    assert first == second
    assert not holding(alias)


def test_connection_stays_while_another_cursor_is_open(database):
    alias = database()
    outer = connections[alias].cursor()
    outer.execute("SELECT 1")
    with connections[alias].cursor() as inner:
        inner.execute("SELECT 2")
    assert holding(alias), "the outer cursor still needs the connection"

    outer.execute("SELECT 3")
    assert outer.fetchone() == (3,)
    outer.close()
    assert not holding(alias)


def test_queries_in_a_loop_over_a_raw_cursor_keep_the_connection(database):
    alias = database()
    Group.objects.using(alias).bulk_create([Group(name=f"g{i}") for i in range(3)])
    seen = []
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT name FROM auth_group ORDER BY name")
        for (name,) in cursor:
            seen.append(Group.objects.using(alias).get(name=name).name)
            assert holding(alias)
    assert seen == ["g0", "g1", "g2"]
    assert not holding(alias)


# Transactions -------------------------------------------------------------------


def test_atomic_holds_connection_until_commit(database):
    alias = database()
    with transaction.atomic(using=alias):
        Group.objects.using(alias).create(name="pending")
        assert holding(alias)
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
        assert holding(alias), "a closed cursor inside atomic() must not end the transaction"
        assert "pending" not in group_names("default"), "not committed yet"

    assert not holding(alias)
    assert usage(alias).checked_out == 0
    assert "pending" in group_names("default")


def test_atomic_rollback_gives_connection_back_and_discards_the_writes(database):
    alias = database()
    with pytest.raises(ZeroDivisionError), transaction.atomic(using=alias):
        Group.objects.using(alias).create(name="doomed")
        raise ZeroDivisionError

    assert not holding(alias)
    assert usage(alias).checked_out == 0
    assert "doomed" not in group_names(alias)


def test_savepoint_rollback_keeps_the_outer_transaction(database):
    alias = database()
    with transaction.atomic(using=alias):
        Group.objects.using(alias).create(name="outer")
        with pytest.raises(ValueError), transaction.atomic(using=alias):
            Group.objects.using(alias).create(name="inner")
            raise ValueError
        assert holding(alias)
        assert group_names(alias) == {"outer"}
        with transaction.atomic(using=alias):
            Group.objects.using(alias).create(name="second-inner")
        assert holding(alias)

    assert not holding(alias)
    assert group_names(alias) == {"outer", "second-inner"}


def test_explicit_savepoints_behave_as_in_stock_django(database):
    alias = database()
    with transaction.atomic(using=alias):
        Group.objects.using(alias).create(name="kept")
        sid = savepoint_create(using=alias)
        Group.objects.using(alias).create(name="undone")
        transaction.savepoint_rollback(sid, using=alias)
        assert holding(alias)
    assert group_names(alias) == {"kept"}
    assert not holding(alias)


def test_on_commit_hook_runs_once_after_commit_with_a_live_connection(database):
    alias = database()
    calls = []

    def hook():
        # The hook can query: the data is committed and a connection is there.
        calls.append(Group.objects.using(alias).filter(name="ordered").count())

    with transaction.atomic(using=alias):
        Group.objects.using(alias).create(name="ordered")
        transaction.on_commit(hook, using=alias)
        assert calls == []

    assert calls == [1]
    assert not holding(alias)
    with transaction.atomic(using=alias):
        Group.objects.using(alias).create(name="unrelated")
    assert calls == [1], "a hook runs once"


def test_on_commit_hook_never_runs_after_rollback(database):
    alias = database()
    calls = []
    with pytest.raises(RuntimeError), transaction.atomic(using=alias):
        Group.objects.using(alias).create(name="cancelled")
        transaction.on_commit(lambda: calls.append("ran"), using=alias)
        raise RuntimeError
    with transaction.atomic(using=alias):
        Group.objects.using(alias).create(name="later")
    assert calls == []
    assert not holding(alias)


def test_on_commit_outside_a_transaction_runs_at_once_without_borrowing(database):
    alias = database()
    calls = []
    transaction.on_commit(lambda: calls.append(holding(alias)), using=alias)
    assert calls == [False], "the hook ran at once, and nothing was borrowed for it"
    assert not holding(alias)


def test_a_failing_on_commit_hook_still_gives_the_connection_back(database):
    alias = database()

    def broken_hook():
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"), transaction.atomic(using=alias):
        Group.objects.using(alias).create(name="committed-anyway")
        transaction.on_commit(broken_hook, using=alias)

    assert not holding(alias)
    assert group_names(alias) == {"committed-anyway"}


@pytest.mark.direct_connection
def test_manual_transaction_holds_the_connection_until_autocommit_is_back(database):
    alias = database()
    conn = connections[alias]
    conn.set_autocommit(False)
    try:
        Group.objects.using(alias).create(name="rolled-back")
        assert holding(alias), "cursor closed, but the transaction is open"
        conn.rollback()
        assert holding(alias)
        assert conn.get_autocommit() is False, "rollback() keeps manual mode, as in stock Django"

        Group.objects.using(alias).create(name="committed")
        pid = backend_pid(alias)
        conn.commit()
        assert holding(alias)
        assert backend_pid(alias) == pid, "same connection for the whole manual session"
        conn.commit()
    finally:
        conn.set_autocommit(True)

    assert not holding(alias)
    assert group_names(alias) == {"committed"}


def test_a_transaction_begun_with_raw_sql_keeps_the_connection_until_it_ends(database):
    """Django's own flags miss a raw BEGIN; the server's transaction status does not."""
    alias = database()
    with connections[alias].cursor() as cursor:
        cursor.execute("BEGIN")
        cursor.execute("INSERT INTO auth_group (name) VALUES (%s)", ["raw"])
    assert holding(alias), "given back now, the pool would roll the transaction back"

    with connections[alias].cursor() as cursor:
        cursor.execute("COMMIT")  # on the same connection, so the row is committed

    assert not holding(alias)
    seen = Worker(lambda: group_names(alias))
    seen.start()
    assert seen.finish() == {"raw"}


def test_borrowing_again_switches_autocommit_back_on(database):
    """A connection another thread gave back in manual-transaction mode comes back in autocommit."""
    alias = database(max_size=1)
    Group.objects.using(alias).create(name="first")  # this thread borrows once and gives back
    assert not holding(alias)

    def manual_session_ended_by_close() -> None:
        conn = connections[alias]
        conn.set_autocommit(False)
        Group.objects.using(alias).create(name="never-committed")
        conn.close()  # back to the pool, still in manual mode (the pool rolls back)

    worker = Worker(manual_session_ended_by_close)
    worker.start()
    worker.finish()

    Group.objects.using(alias).create(name="second")  # the same, single, pooled connection
    assert not holding(alias), "autocommit is on again, so the write is committed and released"
    assert connections[alias].get_autocommit() is True
    seen = Worker(lambda: group_names(alias))
    seen.start()
    assert seen.finish() == {"first", "second"}


def test_connection_created_is_sent_for_every_checkout(database):
    """As with Django's own pool: receivers of connection_created see each borrowed connection."""
    alias = database()
    created = []

    def count(sender, connection, **kwargs) -> None:
        if connection.alias == alias:
            created.append(connection.connection)

    connection_created.connect(count)
    try:
        backend_pid(alias)
        backend_pid(alias)
    finally:
        connection_created.disconnect(count)
    assert len(created) == 2
    assert all(conn is not None for conn in created)


def test_a_connection_created_receiver_that_raises_leaves_a_checkout_that_can_end(database):
    alias = database()
    backend_pid(alias)  # the first checkout, so the next one borrows again

    def fail(sender, connection, **kwargs) -> None:
        if connection.alias == alias:
            raise RuntimeError("a receiver failed")

    connection_created.connect(fail)
    try:
        with pytest.raises(RuntimeError):
            connections[alias].cursor()
    finally:
        connection_created.disconnect(fail)
    assert holding(alias)

    # The connection was borrowed all the same; its next cursor counts and gives it back.
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
    assert not holding(alias)


def test_cursor_opened_inside_atomic_keeps_the_connection_after_commit(database):
    alias = database()
    with transaction.atomic(using=alias):
        cursor = connections[alias].cursor()
        cursor.execute("SELECT 1")
    assert holding(alias), "the cursor can still be used, so its connection stays"
    cursor.execute("SELECT 2")
    assert cursor.fetchone() == (2,)
    cursor.close()
    assert not holding(alias)


# Server-side cursors ----------------------------------------------------------------


def test_server_side_cursor_holds_the_connection_until_exhausted(database):
    alias = database()
    Group.objects.using(alias).bulk_create([Group(name=f"row{i:02}") for i in range(25)])
    rows = Group.objects.using(alias).order_by("name").iterator(chunk_size=5)

    first = next(rows)
    assert first.name == "row00"
    assert holding(alias)
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_cursors")
        assert cursor.fetchone() == (1,), "a real server-side cursor is open"
    assert holding(alias)

    rest = list(rows)
    assert len(rest) == 24
    assert not holding(alias)


def test_server_side_cursor_closed_early_gives_the_connection_back(database):
    alias = database()
    Group.objects.using(alias).bulk_create([Group(name=f"row{i}") for i in range(10)])
    rows = Group.objects.using(alias).iterator(chunk_size=2)
    next(rows)
    assert holding(alias)

    rows.close()

    assert not holding(alias)


# Cursors that are never closed ------------------------------------------------------------


def test_unclosed_cursor_holds_the_connection_until_end_of_request(database):
    alias = database()
    cursor = connections[alias].cursor()
    cursor.execute("SELECT 1")
    Group.objects.using(alias).count()
    assert holding(alias), "release cannot help a cursor that is never closed"

    end_of_request()

    assert not holding(alias)
    assert usage(alias).checked_out == 0


def test_garbage_collection_does_not_give_the_connection_back(database):
    alias = database()
    cursor = connections[alias].cursor()
    cursor.execute("SELECT 1")
    del cursor
    gc.collect()

    assert holding(alias)
    assert usage(alias).checked_out == 1
    end_of_request()
    assert not holding(alias)


def test_leak_diagnostic_logs_where_the_cursor_was_opened(database, settings, caplog):
    settings.DB_LEAK_DIAGNOSTICS = True
    alias = database()
    cursor = connections[alias].cursor()
    cursor.execute("SELECT 1")

    with caplog.at_level(logging.WARNING, logger="backends.leaks"):
        end_of_request()

    [record] = [r for r in caplog.records if r.name == "backends.leaks"]
    assert "never closed" in record.getMessage()
    assert "test_leak_diagnostic_logs_where_the_cursor_was_opened" in record.getMessage()
    assert __file__ in record.getMessage()


def test_leak_diagnostic_is_silent_by_default(database, caplog):
    alias = database()
    connections[alias].cursor().execute("SELECT 1")
    with caplog.at_level(logging.WARNING, logger="backends.leaks"):
        end_of_request()
    assert [r for r in caplog.records if r.name == "backends.leaks"] == []


def test_closed_cursors_are_not_reported_as_leaks(database, settings, caplog):
    settings.DB_LEAK_DIAGNOSTICS = True
    alias = database()
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
    with caplog.at_level(logging.WARNING, logger="backends.leaks"):
        Group.objects.using(alias).count()
        end_of_request()
    assert [r for r in caplog.records if r.name == "backends.leaks"] == []


@pytest.mark.direct_connection
def test_a_cursor_from_an_earlier_checkout_does_not_release_the_current_one(database):
    alias = database()
    stale = connections[alias].cursor()
    stale.execute("SELECT 1")
    end_of_request()  # gives the connection back despite the open cursor

    with transaction.atomic(using=alias):
        Group.objects.using(alias).create(name="in-flight")
        stale.close()
        assert holding(alias)
    assert not holding(alias)


# Broken connections ----------------------------------------------------------------


def terminate(pid: int) -> None:
    """Kill a server session from another connection, and wait until it is gone."""
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])
        assert cursor.fetchone() == (True,)


@contextmanager
def first_connection_held_elsewhere(alias: str) -> Iterator[None]:
    """Another thread holds the pool's first connection: this thread's next checkout gets a new one."""
    Group.objects.using(alias).count()  # the first checkout, which opens the pool
    with connection_held_in_another_thread(alias):
        yield
        assert usage(alias).size == 2, "the checkout above got a connection made after the pool opened"


def test_every_connection_the_pool_hands_out_has_the_configured_isolation_level(database):
    alias = database(max_size=2, options={"isolation_level": IsolationLevel.REPEATABLE_READ})
    with (
        first_connection_held_elsewhere(alias),
        transaction.atomic(using=alias),
        connections[alias].cursor() as cursor,
    ):
        cursor.execute("SHOW transaction_isolation")
        assert cursor.fetchone()[0] == "repeatable read"


def test_every_connection_the_pool_hands_out_has_djangos_time_zone(database):
    # The server starts these sessions in another time zone than Django's (UTC):
    # each new connection needs Django's SET TIME ZONE before its first query.
    alias = database(max_size=2, options={"options": "-c TimeZone=Asia/Tokyo"})
    with first_connection_held_elsewhere(alias), connections[alias].cursor() as cursor:
        cursor.execute("SHOW TimeZone")
        assert cursor.fetchone()[0] == connections[alias].timezone_name == "UTC"


def test_the_checkout_check_sees_data_and_end_of_file_on_a_socket():
    ours, server = socket.socketpair()
    with ours, server:
        assert not health.socket_readable(ours.fileno())  # idle: trusted
        server.send(b"E")  # what a server says before it ends a session
        assert health.socket_readable(ours.fileno())
        ours.recv(1)
        assert not health.socket_readable(ours.fileno())
        server.close()  # end-of-file
        assert health.socket_readable(ours.fileno())


@pytest.mark.direct_connection
def test_terminated_connection_is_not_handed_out(database):
    alias = database()
    dead = backend_pid(alias)
    terminate(dead)

    assert Group.objects.using(alias).count() == 0
    assert backend_pid(alias) != dead
    assert usage(alias).size == 1


@pytest.mark.direct_connection
def test_terminated_connection_fails_only_its_transaction(database):
    alias = database()
    with pytest.raises(Exception) as failure, transaction.atomic(using=alias):
        Group.objects.using(alias).create(name="lost")
        terminate(backend_pid(alias))
        Group.objects.using(alias).create(name="never")
    assert "terminat" in str(failure.value) or "closed" in str(failure.value)

    # The next unit of work gets a healthy connection, without any reset call.
    Group.objects.using(alias).create(name="fine")
    assert group_names(alias) == {"fine"}
    assert not holding(alias)
