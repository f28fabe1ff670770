"""Fixtures that give each test its own small pool on the real test database.

The suite flushes every table after each transactional test, so it makes sure
first that it can only ever touch a test database (test_database_safety below).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from django.conf import settings
from django.db import connections, transaction
from django.db.backends.base.base import NO_DB_ALIAS

from backends.pool import PoolUsage
from project.database import engine_for, with_pool

# Which pool this run exercises (`make test` runs the suite once per pool).
POOL = settings.DB_POOL


@pytest.fixture
def database(transactional_db) -> Callable[..., str]:
    """Give an alias on the test database a pool of its own, sized for the test.

    ``database()`` is the engine this run tests (DB_RELEASE, "cursor" unless
    set), on alias "pool"; ``database(release="request")`` is the stock-Django
    baseline on alias "baseline_pool".
    """
    used: list[str] = []

    def make(
        release: str | None = None, max_size: int = 1, timeout: float = 2.0, options: dict | None = None
    ) -> str:
        alias = "baseline_pool" if release == "request" else "pool"
        release = release or settings.DB_RELEASE
        close_pool(alias)  # a pool left from an earlier test keeps its old size
        base = connections["default"].settings_dict  # points at the test database by now
        connections.settings[alias] = with_pool(
            {**base, "ENGINE": engine_for(release, POOL), "OPTIONS": {**base["OPTIONS"], **(options or {})}},
            POOL,
            min_size=0,
            max_size=max_size,
            timeout=timeout,
        )
        del connections[alias]  # the next access builds it from the settings above
        used.append(alias)
        return alias

    yield make

    for alias in used:
        close_pool(alias)
        del connections[alias]


def close_pool(alias: str) -> None:
    wrapper = connections[alias]
    wrapper.close()
    wrapper.close_pool()


# Test-database safety ------------------------------------------------------------------------------

TEST_DATABASE_PREFIX = "test_"

# Django's PostgreSQL backend creates the test database from a connection to the
# "postgres" maintenance database. When it cannot open one (PgBouncer that lists
# only the site's database, a user without CONNECT on "postgres"), it warns with
# this message and uses the configured database instead: the pool it opens for
# that alias stays pointed at the real database once the test database is
# created (create_test_db() renames the alias but keeps its pool), and every
# flush then empties the real tables.
FALLBACK_WARNING = "Normally Django will use a connection to the 'postgres' database"


class UnsafeTestDatabase(Exception):
    """The tests would run against a database that is not a test database."""


def check_maintenance_database(alias: str) -> None:
    """Connect to "postgres" on `alias`'s server as Django's test setup will, without its fallback."""
    wrapper = connections[alias]
    # What Django's own _nodb_cursor() opens first: the same settings, no database name.
    maintenance = wrapper.__class__({**wrapper.settings_dict, "NAME": None}, alias=NO_DB_ALIAS)
    try:
        with maintenance.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:
        name = wrapper.settings_dict["NAME"]
        test_name = wrapper.settings_dict.get("TEST", {}).get("NAME") or TEST_DATABASE_PREFIX + name
        raise UnsafeTestDatabase(
            f"Cannot connect to the 'postgres' database on the server of DATABASES[{alias!r}] ({exc}). "
            f"The tests create {test_name!r} from there; without it Django "
            f"would run them against {name!r}, whose tables they empty. Point DATABASE_URL at "
            "PostgreSQL itself (not at PgBouncer), or let this user connect to 'postgres'."
        ) from exc
    finally:
        maintenance.close()


def check_is_test_database(wrapper) -> str:
    """The database `wrapper` is really connected to (as the server says), if its name starts with test_."""
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT current_database()")
        (name,) = cursor.fetchone()
    if not name.startswith(TEST_DATABASE_PREFIX):
        raise UnsafeTestDatabase(
            f"DATABASES[{wrapper.alias!r}] is connected to the database {name!r}, not to a test database "
            f"(whose name starts with {TEST_DATABASE_PREFIX!r}): the tests would empty its tables. "
            "Nothing was run. Check DATABASE_URL, and that PgBouncer (if any) maps test_ names "
            "to test databases."
        )
    return name


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings, django_db_blocker):
    """Before the test databases are created: refuse to let Django fall back to a real one."""
    try:
        with django_db_blocker.unblock():
            for alias in connections:
                if not connections[alias].settings_dict.get("TEST", {}).get("MIRROR"):
                    check_maintenance_database(alias)
    except UnsafeTestDatabase as exc:
        pytest.exit(str(exc), returncode=pytest.ExitCode.USAGE_ERROR)
    # And should "postgres" fail only now, the fallback's warning stops the set-up.
    # (pytest restores the warning filters after the test that set the databases up.)
    warnings.filterwarnings("error", message=FALLBACK_WARNING, category=RuntimeWarning)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """Check every alias is on a test database before any test (and any flush); close pools at the end."""
    with django_db_blocker.unblock():
        try:
            for alias in connections:
                # Pools opened during set-up were opened under the configured name.
                close_pool(alias)
                check_is_test_database(connections[alias])
        except UnsafeTestDatabase as exc:
            pytest.exit(str(exc), returncode=pytest.ExitCode.USAGE_ERROR)
    yield
    with django_db_blocker.unblock():
        for alias in connections:
            close_pool(alias)


def holding(alias: str) -> bool:
    """Whether this thread's connection object for `alias` has a connection checked out."""
    return connections[alias].connection is not None


def usage(alias: str) -> PoolUsage:
    return connections[alias].pool_usage()


def backend_pid(alias: str) -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


class Worker(threading.Thread):
    """A thread that runs `target`, keeps its exception, and closes its connections."""

    def __init__(self, target: Callable[[], object], name: str = "worker") -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.result: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._target_fn()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            connections.close_all()

    def finish(self, timeout: float = 30) -> object:
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} did not finish in {timeout}s"
        return self.result


@contextmanager
def connection_held_in_another_thread(alias: str) -> Iterator[None]:
    """Another thread holds one connection of `alias` (inside a transaction) for the block."""
    from django.contrib.auth.models import Group

    taken, done = threading.Event(), threading.Event()

    def hold_one() -> None:
        with transaction.atomic(using=alias):
            Group.objects.using(alias).count()
            taken.set()
            done.wait(10)

    other = Worker(hold_one, "holder")
    other.start()
    assert taken.wait(10), f"the other thread took no connection: {other.error!r}"
    try:
        yield
    finally:
        done.set()
        other.finish()
    assert other.error is None


@pytest.fixture
def serve(tmp_path):
    """Start the site under real gunicorn (project/gunicorn.conf.py) on the test database."""
    from tests.servers import Gunicorn

    servers: list[Gunicorn] = []

    def start(*extra: str, workers: int = 2, env: dict | None = None) -> Gunicorn:
        server = Gunicorn(tmp_path, *extra, workers=workers, env=env)
        servers.append(server)
        server.wait_until_up()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def own_postgres(tmp_path_factory):
    """An embedded PostgreSQL server of this session's own, in a temporary folder, to stop and start at will.

    Never the shared one (.localdb/): other test runs and servers depend on it.
    """
    from devtools.localdb import LocalDatabase

    server = LocalDatabase(tmp_path_factory.mktemp("own-postgres"))
    server.ensure_running()
    yield server
    server.stop()
