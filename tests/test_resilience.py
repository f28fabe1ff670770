"""Dead connections: what the engines tell a 503 handler, and what they recover from on their own."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, OperationalError, connections, transaction
from django.db.models import QuerySet
from django.db.utils import load_backend
from prometheus_client import REGISTRY
from psycopg_pool.base import AttemptWithBackoff

from backends import compat, health
from backends.compiler import READ_RETRIES
from backends.errors import (
    CONNECTION_LOST,
    DATABASE_UNREACHABLE,
    POOL_EXHAUSTED,
    is_connection_error,
    transient_cause,
)
from backends.nativepool import RECONNECT_EVERY_SECONDS, RECONNECT_TIMEOUT_SECONDS
from backends.pool import DatabaseUnreachable, PoolExhausted
from backends.release import hold_connection
from project.database import engine_for, pool_settings, with_pool
from tests.conftest import POOL, Worker, backend_pid, connection_held_in_another_thread, usage

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


@pytest.mark.direct_connection
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
    with connection_held_in_another_thread(alias), pytest.raises(PoolExhausted) as failure:
        Group.objects.using(alias).count()

    assert transient_cause(failure.value) == POOL_EXHAUSTED
    assert not is_connection_error(failure.value)


@pytest.fixture
def unreachable(tmp_path):
    """A release engine whose server does not answer: its socket folder is empty."""
    base = connections["default"].settings_dict
    settings_dict = with_pool(
        {**base, "ENGINE": engine_for("cursor", POOL), "HOST": str(tmp_path), "PORT": "5432"},
        POOL,
        min_size=0,
        max_size=2,
        timeout=0.5,
    )
    # Not in settings.DATABASES, which the test database machinery walks.
    wrapper = load_backend(settings_dict["ENGINE"]).DatabaseWrapper(settings_dict, "nowhere")
    yield wrapper
    wrapper.close()
    wrapper.close_pool()


def test_a_pool_that_cannot_reach_its_server_says_so(unreachable):
    with pytest.raises(DatabaseUnreachable) as failure:
        unreachable.cursor()

    assert transient_cause(failure.value) == DATABASE_UNREACHABLE
    assert "every connection is checked out" not in str(failure.value)


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


@pytest.mark.direct_connection
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


# ORM reads retried on a fresh connection --------------------------------------------

# How long the query under test sleeps on the server: long enough for another
# connection to find it running and terminate it.
NAP_SECONDS = 0.4


def naps(alias: str, seconds: float) -> QuerySet:
    """An ORM read that naps on the server first, and says which backend answered it."""
    return Group.objects.using(alias).extra(
        select={"backend": "pg_backend_pid()"},
        where=["pg_sleep(%s) IS NOT NULL"],
        params=[seconds],
    )


def sleepy_groups(alias: str) -> QuerySet:
    return naps(alias, NAP_SECONDS)


class Killer(Worker):
    """Terminates the next `times` sessions of the test database seen sleeping in a query."""

    def __init__(self, times: int = 1) -> None:
        super().__init__(self.kill, name="killer")
        self.times = times
        self.killed: list[int] = []

    def kill(self) -> list[int]:
        deadline = time.monotonic() + 10
        with connections["default"].cursor() as cursor:
            while len(self.killed) < self.times and time.monotonic() < deadline:
                cursor.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND state = 'active' AND query LIKE %s AND pid <> pg_backend_pid() "
                    "AND NOT pid = ANY(%s)",
                    ["%pg_sleep(%", self.killed],
                )
                row = cursor.fetchone()
                if row is None:
                    time.sleep(0.01)
                    continue
                cursor.execute("SELECT pg_terminate_backend(%s, 5000)", [row[0]])
                self.killed.append(row[0])
        return self.killed


def retries(alias: str) -> float:
    wrapper = connections[alias]
    labels = {"alias": alias, "engine": wrapper.release_engine, "pool": wrapper.pool_name}
    return REGISTRY.get_sample_value("db_query_retries_total", labels) or 0.0


@pytest.fixture
def killer():
    started: list[Killer] = []

    def start(times: int = 1) -> Killer:
        started.append(Killer(times))
        started[-1].start()
        return started[-1]

    yield start
    for each in started:
        each.finish()
        assert each.error is None


@pytest.fixture
def release_alias(database):
    """The release engine of this run's pool, with room for a second connection."""
    alias = database(release="cursor", max_size=2)
    Group.objects.using(alias).create(name="survivor")
    return alias


@pytest.mark.direct_connection
def test_an_orm_read_whose_connection_is_killed_runs_again_on_a_fresh_one(release_alias, killer):
    before = retries(release_alias)
    kill = killer()

    rows = list(sleepy_groups(release_alias).values_list("name", "backend"))

    kill.finish()
    assert [name for name, _ in rows] == ["survivor"]
    assert rows[0][1] not in kill.killed, "the retry ran on the connection that was killed"
    assert retries(release_alias) == before + 1
    assert connections[release_alias].connection is None  # and it went back to the pool


@pytest.mark.direct_connection
def test_single_row_and_aggregate_reads_run_again_too(release_alias, killer):
    before = retries(release_alias)

    killer()
    assert sleepy_groups(release_alias).get().name == "survivor"
    killer()
    assert sleepy_groups(release_alias).count() == 1
    killer()
    assert sleepy_groups(release_alias).exists()

    assert retries(release_alias) == before + 3


@pytest.mark.direct_connection
def test_a_read_whose_connection_breaks_in_waves_gives_up_after_two_retries(release_alias, killer):
    before = retries(release_alias)
    killer(times=READ_RETRIES + 1)

    with pytest.raises(OperationalError) as failure:
        list(sleepy_groups(release_alias))

    assert transient_cause(failure.value) == CONNECTION_LOST
    assert retries(release_alias) == before + READ_RETRIES


@pytest.mark.direct_connection
def test_a_read_whose_retry_is_killed_too_runs_again(release_alias, killer):
    before = retries(release_alias)
    kill = killer(times=2)

    rows = list(sleepy_groups(release_alias).values_list("name", "backend"))

    kill.finish()
    assert [name for name, _ in rows] == ["survivor"]
    assert rows[0][1] not in kill.killed
    assert retries(release_alias) == before + 2  # two kills, two retries (READ_RETRIES allows them)


@pytest.mark.direct_connection
def test_raw_sql_is_not_run_again(release_alias, killer):
    before = retries(release_alias)
    killer()

    with pytest.raises(OperationalError), connections[release_alias].cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", [NAP_SECONDS])

    assert retries(release_alias) == before
    # The next query gets a working connection all the same.
    assert Group.objects.using(release_alias).count() == 1


@pytest.mark.direct_connection
def test_a_read_inside_atomic_is_not_run_again(release_alias, killer):
    before = retries(release_alias)
    killer()

    with pytest.raises(OperationalError), transaction.atomic(using=release_alias):
        list(sleepy_groups(release_alias))

    assert retries(release_alias) == before
    assert Group.objects.using(release_alias).count() == 1


@pytest.mark.direct_connection
def test_a_read_whose_rows_were_being_handed_out_is_not_run_again(release_alias):
    # .iterator() fetches its rows after the query started handing them out:
    # the caller may have acted on some of them already.
    Group.objects.using(release_alias).bulk_create(Group(name=f"g{n}") for n in range(3))
    before = retries(release_alias)
    rows = sleepy_groups(release_alias).order_by("name").iterator(chunk_size=1)
    first = next(rows)
    assert first.name == "g0"
    terminate(first.backend)

    with pytest.raises(OperationalError):
        list(rows)

    assert retries(release_alias) == before


@pytest.mark.direct_connection
def test_a_read_while_another_cursor_is_open_is_not_run_again(release_alias, killer):
    # The connection is not the read's alone, so it is not given back on the
    # error, and a retry would run on the dead connection again.
    before = retries(release_alias)
    other = connections[release_alias].cursor()
    try:
        killer()
        with pytest.raises(OperationalError):
            list(sleepy_groups(release_alias))
    finally:
        other.close()

    assert retries(release_alias) == before


@pytest.mark.direct_connection
def test_a_read_on_a_connection_pinned_by_session_state_is_not_run_again(release_alias, killer):
    # A fresh connection would lack the session's SET: the read must not run there.
    before = retries(release_alias)
    with connections[release_alias].cursor() as cursor:
        cursor.execute("SET statement_timeout = '9s'")
    killer()

    with pytest.raises(OperationalError):
        list(sleepy_groups(release_alias))

    assert retries(release_alias) == before


@pytest.mark.direct_connection
def test_a_read_inside_hold_connection_is_not_run_again(release_alias, killer):
    before = retries(release_alias)
    killer()

    with pytest.raises(OperationalError), hold_connection(using=release_alias):
        list(sleepy_groups(release_alias))

    assert retries(release_alias) == before


@pytest.mark.direct_connection
def test_the_baseline_does_not_run_reads_again(database, killer):
    alias = database(release="request", max_size=2)
    Group.objects.using(alias).create(name="survivor")
    killer()

    with pytest.raises(OperationalError):
        list(sleepy_groups(alias))

    assert retries(alias) == 0


@pytest.mark.direct_connection
def test_reads_from_several_threads_survive_backends_killed_under_them(database):
    alias = database(release="cursor", max_size=4, timeout=5)
    Group.objects.using(alias).create(name="survivor")
    before = retries(alias)
    stop, errors, reads = threading.Event(), [], [0]

    def read_until_stopped() -> None:
        while not stop.is_set():
            try:
                assert list(naps(alias, 0.02).values_list("name", flat=True)) == ["survivor"]
                reads[0] += 1
            except Exception as exc:  # noqa: BLE001 - counted, and the test fails on any
                errors.append(exc)

    def kill_every_session_of_the_test_database() -> None:
        with connections["default"].cursor() as cursor:
            for _ in range(6):
                time.sleep(0.5)
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND state = 'active' AND query LIKE %s "
                    "AND pid <> pg_backend_pid()",
                    ["%pg_sleep(%"],
                )

    readers = [Worker(read_until_stopped, name=f"reader-{n}") for n in range(4)]
    for reader in readers:
        reader.start()
    killer = Worker(kill_every_session_of_the_test_database, name="killer")
    killer.start()
    killer.finish()
    stop.set()
    for reader in readers:
        reader.finish()

    assert killer.error is None
    assert errors == []
    assert reads[0] > 0
    assert retries(alias) > before


# Dead connections in the pool ---------------------------------------------------------


def fill_pool(alias: str, size: int) -> list[int]:
    """Have `size` connections idle in the pool; the server process id of each."""
    ready, done = threading.Barrier(size + 1), threading.Event()

    def hold_one() -> int:
        with transaction.atomic(using=alias):
            pid = backend_pid(alias)
            ready.wait(10)
            done.wait(10)
        return pid

    workers = [Worker(hold_one, name=f"holder-{n}") for n in range(size)]
    for worker in workers:
        worker.start()
    ready.wait(10)
    done.set()
    pids = [worker.finish() for worker in workers]
    assert usage(alias).idle == size
    return pids


@pytest.mark.direct_connection
def test_dead_idle_connections_are_passed_over_without_waiting(database):
    # psycopg_pool, left to check what it hands out, sleeps a second after the
    # first dead connection: more than this pool's whole timeout.
    alias = database(max_size=3, timeout=0.8)
    dead = fill_pool(alias, 3)
    for pid in dead:
        terminate(pid)
    before = retries(alias)

    assert Group.objects.using(alias).count() == 0  # no PoolExhausted
    assert backend_pid(alias) not in dead
    assert retries(alias) == before  # caught at checkout, before any query ran on them


def test_after_a_connection_broke_the_connections_given_back_before_are_pinged(database):
    # A mass kill reaches idle connections a moment after it broke a query:
    # their sockets may not say so yet, and a recent one would skip its ping.
    alias = database(release="cursor")
    with hold_connection(alias):
        driver = connections[alias].driver_connection()
    assert connections[alias].connection is None  # given back
    assert not health.needs_ping(driver)  # just now, and nothing waits on its socket

    health.distrust_returned_connections()
    assert health.needs_ping(driver)

    health.mark_returned(driver)  # given back since: trusted again
    assert not health.needs_ping(driver)


# Reconnecting after an outage ---------------------------------------------------------


def test_the_native_pool_reconnects_every_half_second_however_long_the_outage(database):
    if POOL != "native":
        pytest.skip("psycopg_pool's settings: QueuePool connects in the request that asks")
    alias = database()
    Group.objects.using(alias).count()

    assert connections[alias].pool.reconnect_timeout == RECONNECT_TIMEOUT_SECONDS
    assert compat.reconnect_delays() == (RECONNECT_EVERY_SECONDS, 1.0)
    # psycopg_pool still reads them: each wait is the same, not twice the last.
    attempt = AttemptWithBackoff(timeout=60)
    waits = []
    for _ in range(4):
        attempt.update_delay(time.monotonic())
        waits.append(attempt.delay)
    assert all(0.8 * RECONNECT_EVERY_SECONDS <= wait <= 1.2 * RECONNECT_EVERY_SECONDS for wait in waits)


def test_the_reconnect_timeout_comes_from_the_environment_when_set():
    sizes = {"min_size": 1, "max_size": 4, "timeout": 5.0}
    assert "reconnect_timeout" not in pool_settings("native", **sizes)["pool"]  # the engine's default
    assert pool_settings("native", **sizes, reconnect_timeout=3.0)["pool"]["reconnect_timeout"] == 3.0
    with pytest.raises(ImproperlyConfigured, match="DB_POOL_RECONNECT_TIMEOUT"):
        pool_settings("native", **sizes, reconnect_timeout=0)


@pytest.fixture
def own_engine(own_postgres):
    """The release engine of this run's pool on a server of the test's own, which it may stop."""
    server = own_postgres.ensure_running()
    base = connections["default"].settings_dict
    settings_dict = with_pool(
        {
            **base,
            "ENGINE": engine_for("cursor", POOL),
            "NAME": "postgres",
            "HOST": str(server.socket_dir),
            "PORT": str(server.port),
        },
        POOL,
        min_size=2,
        max_size=2,
        timeout=1.5,
    )
    wrapper = load_backend(settings_dict["ENGINE"]).DatabaseWrapper(settings_dict, "own")
    yield wrapper
    wrapper.close()
    wrapper.close_pool()
    own_postgres.ensure_running()


def one(wrapper) -> int:
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT 1")
        return cursor.fetchone()[0]


def test_the_first_query_after_an_outage_is_served(own_engine, own_postgres):
    assert one(own_engine) == 1
    own_postgres.stop()
    with pytest.raises(OperationalError) as failure:
        one(own_engine)
    assert transient_cause(failure.value) in (DATABASE_UNREACHABLE, CONNECTION_LOST)
    # Long enough for psycopg_pool's own backoff (1, 2, 4 s) to put its next
    # attempt past the pool's timeout from the moment the server is back.
    time.sleep(3)
    own_postgres.ensure_running()

    assert one(own_engine) == 1
