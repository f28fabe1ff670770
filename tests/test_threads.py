"""Threads sharing a tiny pool: who gets the connection, and when."""

from __future__ import annotations

import threading

import pytest
from django.contrib.auth.models import Group
from django.db import connections, transaction

from backends.pool import PoolExhausted
from tests.conftest import Worker, backend_pid, holding

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

IDLE_WAIT = 5.0  # how long the first thread idles at most, waiting for the second


def first_idles_while_second_queries(alias: str) -> tuple[Worker, Worker]:
    """Thread A queries, then idles (an external call); thread B queries meanwhile."""
    a_idle = threading.Event()
    b_done = threading.Event()

    def a():
        Group.objects.using(alias).count()
        a_idle.set()
        b_done.wait(IDLE_WAIT)  # the "external API call"
        return Group.objects.using(alias).count()

    def b():
        a_idle.wait(IDLE_WAIT)
        try:
            return Group.objects.using(alias).count()
        finally:
            b_done.set()

    first, second = Worker(a, "A"), Worker(b, "B")
    first.start()
    second.start()
    first.finish()
    second.finish()
    return first, second


def test_second_thread_gets_the_connection_while_the_first_idles(database):
    alias = database(max_size=1, timeout=1.0)
    first, second = first_idles_while_second_queries(alias)
    assert first.error is None and second.error is None
    assert (first.result, second.result) == (0, 0)


def test_with_the_baseline_the_second_thread_times_out(database):
    alias = database(release="request", max_size=1, timeout=0.3)
    first, second = first_idles_while_second_queries(alias)
    assert first.error is None
    assert isinstance(second.error, PoolExhausted)
    assert "No connection free" in str(second.error)


def test_a_dozen_threads_share_one_connection_without_errors(database):
    alias = database(max_size=1, timeout=10.0)
    Group.objects.using(alias).create(name="shared")

    def hammer(n: int) -> int:
        done = 0
        for i in range(25):
            if i % 2:
                assert Group.objects.using(alias).filter(name="shared").exists()
            else:
                with connections[alias].cursor() as cursor:
                    cursor.execute("SELECT %s::int", [n])
                    assert cursor.fetchone() == (n,)
            assert not holding(alias)
            done += 1
        return done

    workers = [Worker(lambda n=n: hammer(n), f"T{n}") for n in range(12)]
    for worker in workers:
        worker.start()
    results = [worker.finish() for worker in workers]
    assert [w.error for w in workers] == [None] * 12
    assert results == [25] * 12


@pytest.mark.direct_connection
def test_a_transactions_connection_is_never_handed_to_another_thread(database):
    alias = database(max_size=1, timeout=0.3)
    in_transaction = threading.Event()
    other_tried = threading.Event()

    def writer():
        with transaction.atomic(using=alias):
            Group.objects.using(alias).create(name="uncommitted")
            pid = backend_pid(alias)
            in_transaction.set()
            other_tried.wait(IDLE_WAIT)
            assert backend_pid(alias) == pid
        return pid

    def intruder():
        in_transaction.wait(IDLE_WAIT)
        try:
            return Group.objects.using(alias).filter(name="uncommitted").exists()
        finally:
            other_tried.set()

    first, second = Worker(writer, "writer"), Worker(intruder, "intruder")
    first.start()
    second.start()
    first.finish()
    second.finish()

    assert first.error is None
    assert isinstance(second.error, PoolExhausted), "the connection stayed with the transaction"
    # Once committed, the connection is free and the row is there for anyone.
    check = Worker(lambda: Group.objects.using(alias).filter(name="uncommitted").exists())
    check.start()
    assert check.finish() is True


def test_the_pool_hands_out_the_connection_given_back_last(database):
    """Newest first: a few connections stay busy and trusted, the rest idle where max_idle closes them."""
    alias = database(max_size=2, timeout=5.0)
    holding_one, give_back = threading.Event(), threading.Event()

    def hold_then_give_back() -> int:
        with transaction.atomic(using=alias):
            pid = backend_pid(alias)
            holding_one.set()
            give_back.wait(IDLE_WAIT)
        return pid

    other = Worker(hold_then_give_back, "other")
    other.start()
    assert holding_one.wait(IDLE_WAIT)
    with transaction.atomic(using=alias):
        given_back_first = backend_pid(alias)
    give_back.set()
    given_back_last = other.finish()
    assert other.error is None
    assert given_back_first != given_back_last

    assert backend_pid(alias) == given_back_last
