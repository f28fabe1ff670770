"""What the engines rely on inside Django and the pool libraries (backends/compat.py); their assembly.

Each test here fails when a release of Django, psycopg_pool,
django-db-connection-pool or SQLAlchemy changes something the engines reach
into, and names it.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import time

import psycopg
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import ProgrammingError, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.postgresql import base as postgresql
from psycopg_pool import ConnectionPool

from backends import compat
from backends.checkout import CheckoutMixin
from backends.instrumentation import InstrumentedMixin
from backends.nativepool import NativePoolMixin
from backends.releasing import ConnectionReleaseMixin
from tests.conftest import POOL, backend_pid, holding

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

native_only = pytest.mark.skipif(POOL != "native", reason="psycopg_pool's insides: the native run")
queue_pool_only = pytest.mark.skipif(POOL != "dj_db_conn_pool", reason="QueuePool's insides")


# How an engine is assembled ----------------------------------------------------------------


def test_the_shipped_engines_are_assembled_in_order():
    from backends.baseline.base import DatabaseWrapper as Baseline
    from backends.release.base import DatabaseWrapper as Release

    assert Release.release_engine == "release"
    assert Baseline.release_engine == "baseline"
    if POOL == "dj_db_conn_pool":
        from backends.baseline.dj_db_conn_pool.base import DatabaseWrapper as QueueBaseline
        from backends.release.dj_db_conn_pool.base import DatabaseWrapper as QueueRelease

        assert (QueueRelease.release_engine, QueueBaseline.release_engine) == ("release", "baseline")


def test_an_engine_with_the_instrumentation_above_the_checkout_fails_when_defined():
    with pytest.raises(ImproperlyConfigured, match="must come in this order"):

        class Wrong(InstrumentedMixin, ConnectionReleaseMixin, NativePoolMixin, postgresql.DatabaseWrapper):
            pass


def test_an_engine_with_the_pool_below_django_fails_when_defined():
    with pytest.raises(ImproperlyConfigured, match="must come in this order"):

        class Wrong(ConnectionReleaseMixin, InstrumentedMixin, postgresql.DatabaseWrapper, NativePoolMixin):
            pass


def test_an_engine_without_the_instrumentation_fails_when_defined():
    with pytest.raises(ImproperlyConfigured, match="no InstrumentedMixin"):

        class Wrong(CheckoutMixin, NativePoolMixin, postgresql.DatabaseWrapper):
            pass


def test_a_pool_layer_missing_part_of_the_protocol_fails_when_defined():
    class HalfAPool:
        pool_name = "half"
        pool_timeout_error = TimeoutError

    with pytest.raises(ImproperlyConfigured, match="checkout_params"):

        class Wrong(CheckoutMixin, InstrumentedMixin, HalfAPool, postgresql.DatabaseWrapper):
            pass


# Django --------------------------------------------------------------------------------------


def assigned_attributes(function) -> set[str]:
    """The `X` of every `self.X = ...` / `wrapper.X = ...` in a function's source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return {
        target.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
    }


def test_the_wrapper_reset_matches_what_djangos_connect_resets():
    """If Django's connect() starts resetting another attribute, borrowing again must too."""
    django_resets = assigned_attributes(BaseDatabaseWrapper.connect) - {"connection"}
    assert django_resets == assigned_attributes(compat.reset_state_as_connect_does)


def test_django_still_has_the_hooks_the_engines_override():
    for name in (
        "get_new_connection",
        "_close",
        "_cursor",
        "_set_autocommit",
        "make_cursor",
        "make_debug_cursor",
    ):
        assert callable(getattr(postgresql.DatabaseWrapper, name)), name
    assert isinstance(postgresql.DatabaseWrapper.pool, property)
    assert callable(postgresql.DatabaseWrapper.close_pool)
    assert callable(postgresql.DatabaseWrapper.check_settings)


def test_django_sets_the_role_through_the_method_the_release_engines_replace():
    """If Django stops composing SET ROLE with the wrapper's cursor, the replacement can go."""
    configure = inspect.getsource(postgresql.DatabaseWrapper._configure_connection)
    assert "self._configure_role(connection)" in configure
    assert "self.ops.compose_sql(" in inspect.getsource(postgresql.DatabaseWrapper._configure_role)
    assert ConnectionReleaseMixin._configure_role is compat.RoleSetOnTheConnectionMixin._configure_role


def test_djangos_cursor_ends_as_the_engines_borrowing_again_ends_it():
    """After a release the engines make the cursor as _cursor() does once connected."""
    source = inspect.getsource(BaseDatabaseWrapper._cursor)
    assert "self.ensure_connection()" in source
    assert "return self._prepare_cursor(self.create_cursor(name))" in source


def test_django_keeps_its_pools_where_compat_reads_them():
    assert compat.native_pools() is postgresql.DatabaseWrapper._connection_pools
    assert isinstance(compat.native_pools(), dict)


@native_only
def test_a_native_pool_is_found_by_alias_once_used(database):
    alias = database()
    backend_pid(alias)
    assert compat.native_pools()[alias] is connections[alias].pool


def test_configure_connection_sets_djangos_time_zone(database):
    alias = database()
    wrapper = connections[alias]
    params = {**wrapper.get_connection_params(), "options": "-c TimeZone=Asia/Tokyo", "autocommit": True}
    params.pop("pool", None)
    with psycopg.connect(**params) as raw:
        assert raw.info.parameter_status("TimeZone") == "Asia/Tokyo"
        assert compat.configure_connection(wrapper, raw) is True, "SQL ran"
        assert raw.info.parameter_status("TimeZone") == wrapper.timezone_name == "UTC"
        assert compat.configure_connection(wrapper, raw) is False, "nothing left to do"


def snapshot(wrapper) -> dict:
    """What Django reads on the wrapper, less the connection, the clocks and the engines' caches."""
    clocks = {"checked_out_at", "checkout_wait", "database_seconds", "kept_seconds", "keeping_since"}
    left_out = {"connection", "checkout", "close_at", "_checkout_params", *clocks}
    state = {name: value for name, value in vars(wrapper).items() if name not in left_out}
    # CONN_MAX_AGE is 0: close() at the end of the request is due at once.
    state["close_at is due"] = wrapper.close_at is not None and wrapper.close_at <= time.monotonic()
    driver = wrapper.driver_connection()
    state["driver autocommit"] = driver.autocommit
    state["driver time zone"] = driver.info.parameter_status("TimeZone")
    state["driver transaction status"] = driver.info.transaction_status
    return state


def test_borrowing_again_leaves_the_wrapper_as_a_full_connect_does(database):
    alias = database()
    wrapper = connections[alias]
    wrapper.ensure_connection()  # Django's connect(), from a fresh wrapper
    assert not wrapper.released
    after_connect = snapshot(wrapper)

    # A failing query outside a transaction: errors_occurred is set, the connection goes back.
    with pytest.raises(ProgrammingError), wrapper.cursor() as cursor:
        cursor.execute("SELECT * FROM no_such_table")
    assert not holding(alias)
    assert wrapper.released and wrapper.errors_occurred

    wrapper.ensure_connection()  # borrow again
    assert not wrapper.released
    assert snapshot(wrapper) == after_connect


# psycopg_pool ----------------------------------------------------------------------------------


def test_the_check_psycopg_pool_runs_on_getconn_can_be_replaced(database):
    alias = database()
    params = {**connections[alias].get_connection_params(), "autocommit": True}
    params.pop("pool", None)
    checked = []
    pool = ConnectionPool(
        kwargs=params, min_size=1, max_size=1, check=ConnectionPool.check_connection, open=True
    )
    try:
        compat.replace_pool_check(pool, ConnectionPool.check_connection, checked.append)
        assert compat.pool_check(pool) == checked.append
        pool.putconn(conn := pool.getconn())
        assert checked == [conn], "psycopg_pool ran the replaced check on getconn()"
        compat.replace_pool_check(pool, ConnectionPool.check_connection, None)
        assert compat.pool_check(pool) == checked.append, "only a check that is `current` is replaced"
    finally:
        pool.close()


@native_only
def test_psycopg_pool_keeps_its_idle_connections_where_compat_reorders_them(database):
    alias = database(max_size=2)
    backend_pid(alias)
    pool = connections[alias].pool
    assert compat.hands_out_newest_first(pool)
    compat.hand_out_newest_first(pool)  # twice is once
    assert len(pool._pool) == 1 and compat.hands_out_newest_first(pool)
    assert "self._pool.popleft()" in inspect.getsource(type(pool)._get_ready_connection)


# django-db-connection-pool ----------------------------------------------------------------------


@queue_pool_only
def test_django_db_connection_pools_container_is_where_compat_reads_it(database):
    from sqlalchemy.pool import QueuePool

    alias = database()
    assert compat.queue_pool(alias) is None
    backend_pid(alias)
    pool = compat.queue_pool(alias)
    assert isinstance(pool, QueuePool)
    assert {"pool_size", "max_overflow"} <= set(compat.queue_pool_defaults())

    assert compat.queue_pool_hands_out_newest_first(pool)
    assert compat.drop_queue_pool(alias) is pool
    assert compat.queue_pool(alias) is None
    assert compat.drop_queue_pool(alias) is None
    pool.dispose()


@queue_pool_only
def test_django_reads_psycopgs_info_through_queue_pools_proxy(database):
    alias = database()
    wrapper = connections[alias]
    wrapper.ensure_connection()
    compat.expose_driver_info(wrapper.connection)
    assert isinstance(wrapper.connection.info, psycopg.ConnectionInfo)
    assert wrapper.connection.info.backend_pid == wrapper.driver_connection().info.backend_pid
    assert wrapper.pg_version >= 100000


def test_a_responses_closers_run_before_request_finished_is_sent():
    from django.core.signals import request_finished
    from django.http import HttpResponse

    heard = []
    response = HttpResponse()
    compat.call_when_closing(response, lambda: heard.append("closer"))

    def receiver(**kwargs):
        heard.append("request_finished")

    request_finished.connect(receiver)
    try:
        response.close()
    finally:
        request_finished.disconnect(receiver)
    assert heard == ["closer", "request_finished"]


# The driver cursors ----------------------------------------------------------------------------


def test_driver_cursors_are_told_apart_by_identity():
    """A checkout keys the driver cursors it counts by the cursor itself (CheckoutMixin.counted_cursors).

    Django's cursor classes and psycopg's own (the named cursors of OPTIONS
    server_side_binding) must not compare or hash by value.
    """
    for cursor_class in (
        postgresql.Cursor,
        postgresql.ServerBindingCursor,
        postgresql.ServerSideCursor,
        psycopg.ServerCursor,
    ):
        assert cursor_class.__eq__ is object.__eq__, cursor_class
        assert cursor_class.__hash__ is object.__hash__, cursor_class
