"""backends.testing: the assertions a project's own tests use to show a view gives its connection back."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.db import connections, transaction

from backends.testing import (
    InsideAtomicBlock,
    assert_no_connection_held,
    count_checkouts,
    no_connection_held,
    releases_connection,
)


def slow_call() -> str:
    return "the carrier's answer"


def read_then_call(alias: str) -> str:
    """A view's shape: one query, its cursor closed, then the external call (a stand-in that checks)."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
    return releases_connection(slow_call, using=alias)()


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_call_after_a_closed_cursor_passes_on_the_release_engine(database):
    alias = database(release="cursor")
    assert read_then_call(alias) == "the carrier's answer"


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_call_while_stock_django_holds_the_connection_fails(database):
    alias = database(release="request")
    try:
        with pytest.raises(AssertionError, match="checked out here"):
            read_then_call(alias)
    finally:
        connections[alias].close()


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_cursor_left_open_fails_on_the_release_engine(database):
    alias = database(release="cursor")
    cursor = connections[alias].cursor()
    cursor.execute("SELECT 1")
    try:
        with pytest.raises(AssertionError, match="a cursor is still open"):
            assert_no_connection_held(alias)
    finally:
        cursor.close()
    assert_no_connection_held(alias)


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_block_that_ends_holding_fails(database):
    alias = database(release="cursor")
    with pytest.raises(AssertionError), no_connection_held(alias):
        leaked = connections[alias].cursor()
    leaked.close()
    with no_connection_held(alias):
        Group.objects.using(alias).count()


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_checkouts_are_counted_per_query_on_release_and_once_on_stock(database):
    release, stock = database(release="cursor"), database(release="request")
    for alias, expected in ((release, 2), (stock, 1)):
        with count_checkouts(alias) as checkouts:
            Group.objects.using(alias).count()
            Group.objects.using(alias).exists()
        assert checkouts.count == expected, alias
        connections[alias].close()
    with count_checkouts(release) as checkouts:
        pass
    assert checkouts.count == 0


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_inside_atomic_every_helper_refuses_and_names_transaction_test_case(database):
    alias = database(release="cursor")
    with transaction.atomic(using=alias):
        for attempt in (
            lambda: assert_no_connection_held(alias),
            lambda: releases_connection(slow_call, using=alias)(),
            lambda: count_checkouts(alias).__enter__(),
        ):
            with pytest.raises(InsideAtomicBlock, match="TransactionTestCase"):
                attempt()


@pytest.mark.django_db
def test_djangos_test_case_transaction_is_refused_rather_than_passed():
    # pytest-django's plain django_db is Django's TestCase: the test runs inside atomic().
    with pytest.raises(InsideAtomicBlock, match=r"django_db\(transaction=True\)"):
        assert_no_connection_held()


@pytest.mark.django_db(transaction=True)
def test_an_engine_that_reports_no_checkouts_is_named(settings):
    from django.db import connections as all_connections

    plain = {**all_connections["default"].settings_dict, "ENGINE": "django.db.backends.postgresql"}
    plain["OPTIONS"] = {k: v for k, v in plain["OPTIONS"].items() if k != "pool"}
    all_connections.settings["plain"] = plain
    try:
        with pytest.raises(TypeError, match="does not report its checkouts"):
            assert_no_connection_held("plain")
    finally:
        all_connections["plain"].close()
        del all_connections["plain"]
        del all_connections.settings["plain"]


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_an_async_stand_in_is_checked_when_it_is_awaited(database):
    from asgiref.sync import async_to_sync, sync_to_async

    alias = database(release="cursor")

    async def fake_service() -> str:
        return "the carrier's answer"

    def open_cursor():
        cursor = connections[alias].cursor()
        cursor.execute("SELECT 1")
        return cursor

    async def view(leave_open: bool) -> str:
        cursor = await sync_to_async(open_cursor)()  # on the request's thread, as the async ORM runs
        if not leave_open:
            await sync_to_async(cursor.close)()
        try:
            return await releases_connection(fake_service, using=alias)()
        finally:
            await sync_to_async(cursor.close)()

    assert async_to_sync(view)(leave_open=False) == "the carrier's answer"
    with pytest.raises(AssertionError, match="a cursor is still open"):
        async_to_sync(view)(leave_open=True)
