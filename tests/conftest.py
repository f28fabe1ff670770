"""Fixtures that give each test its own small pool on the real test database."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from django.conf import settings
from django.db import connections

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


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """Close every alias's pool before the test database is dropped."""
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
