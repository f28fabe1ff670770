"""Faults: transient database trouble answers 503 with Retry-After, logged once; nothing else breaks.

Real faults only: server sessions terminated with pg_terminate_backend, a pool
whose every connection is taken, a PostgreSQL of our own stopped and started.
Run alone with `pytest -m faults`.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import psycopg
import pytest
from asgiref.sync import async_to_sync
from django.db import connections
from django.test import AsyncClient, Client

from apps.unavailable import RETRY_AFTER_SECONDS
from backends.errors import CONNECTION_LOST, POOL_EXHAUSTED
from tests.conftest import POOL
from tests.test_metrics import every_connection_taken
from tests.test_shop_support import make_order, make_shop

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]


# Helpers ------------------------------------------------------------------------------------------


def direct_connection() -> psycopg.Connection:
    """A connection of its own to the test database, outside every pool."""
    s = connections["default"].settings_dict
    return psycopg.connect(
        host=s["HOST"], port=s["PORT"], user=s["USER"], password=s["PASSWORD"] or None,
        dbname=s["NAME"], autocommit=True,
    )  # fmt: skip


def terminate(pid: int) -> None:
    with direct_connection() as conn:
        conn.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])


@contextmanager
def every_query_loses_its_connection(alias: str = "default"):
    """Each query this thread runs on `alias` finds its server session terminated under it."""

    def terminate_then_execute(execute, sql, params, many, context):
        driver_connection = context["connection"].connection
        # django-db-connection-pool hands out SQLAlchemy's proxy of the psycopg connection.
        driver_connection = getattr(driver_connection, "dbapi_connection", driver_connection)
        terminate(driver_connection.info.backend_pid)
        return execute(sql, params, many, context)

    with connections[alias].execute_wrapper(terminate_then_execute):
        yield


# The pools' own lines about a dead connection they discard: housekeeping, once per
# connection, not about the request (test_a_lost_connection_is_logged_once_in_all pins them).
POOL_LOGGERS = ("psycopg.pool", "sqlalchemy.pool")


def warnings_logged(caplog, *, ignore: tuple[str, ...] = POOL_LOGGERS) -> list[tuple[str, str, str]]:
    return [
        (r.name, r.levelname, r.getMessage())
        for r in caplog.records
        if r.levelno >= logging.WARNING and not r.name.startswith(ignore)
    ]


def assert_one_warning_naming(caplog, cause: str, path: str, method: str = "GET") -> None:
    lines = warnings_logged(caplog)
    assert len(lines) == 1, lines
    name, level, message = lines[0]
    assert (name, level) == ("apps.unavailable", "WARNING")
    assert message.startswith(f"503 for {method} {path}: {cause} (")
    assert "\n" not in message


def assert_503(response, cause: str, *, json: bool) -> None:
    assert response.status_code == 503, response.content[:300]
    assert response["Retry-After"] == str(RETRY_AFTER_SECONDS)
    if json:
        assert response.json()["cause"] == cause
        assert response.json()["status"] == "unavailable"
    else:
        assert response["Content-Type"].startswith("text/plain")
        assert b"Please retry shortly." in response.content


@pytest.fixture(autouse=True)
def no_connection_held_at_start():
    connections["default"].close()


@pytest.fixture
def shop():
    shop = make_shop()
    make_order(shop.ada, [(shop.novel, 1)], number="S-1")
    connections["default"].close()
    return shop


# Every kind of view answers 503, once logged ----------------------------------------------------------

# (path, answered in JSON): HTML, JSON (ORM and raw), streaming, the probe.
SYNC_VIEWS = [
    ("/products/", False),
    ("/products/{novel}/", False),
    ("/reports/sales/", False),
    ("/orders/export.csv", False),
    ("/api/orm/products/", True),
    ("/api/orm/products/{novel}/", True),
    ("/api/raw/reports/sales/", True),
    ("/readyz", True),
]


@pytest.mark.parametrize(("path", "json"), SYNC_VIEWS)
def test_a_connection_lost_mid_request_answers_503_logged_once(shop, caplog, path, json):
    path = path.format(novel=shop.novel.pk)
    with every_query_loses_its_connection(), caplog.at_level(logging.INFO):
        response = Client(raise_request_exception=False).get(path)

    assert_503(response, CONNECTION_LOST, json=json)
    assert_one_warning_naming(caplog, CONNECTION_LOST, path)


@pytest.mark.parametrize(("path", "json"), SYNC_VIEWS)
def test_an_exhausted_pool_answers_503_logged_once(shop, caplog, path, json):
    path = path.format(novel=shop.novel.pk)
    with every_connection_taken(), caplog.at_level(logging.INFO):
        response = Client(raise_request_exception=False).get(path)

    assert_503(response, POOL_EXHAUSTED, json=json)
    assert_one_warning_naming(caplog, POOL_EXHAUSTED, path)


def test_an_async_view_answers_503_logged_once(shop, caplog):
    path = f"/api/async/products/{shop.novel.pk}/summary/"
    with every_query_loses_its_connection(), caplog.at_level(logging.INFO):
        response = async_to_sync(AsyncClient(raise_request_exception=False).get)(path)

    assert_503(response, CONNECTION_LOST, json=True)
    assert_one_warning_naming(caplog, CONNECTION_LOST, path)


def test_an_order_whose_transaction_is_cut_answers_503_and_changes_nothing(shop, caplog):
    from apps.orders.models import Order

    body = {"customer": shop.ada.pk, "lines": [{"product": shop.kettle.pk, "quantity": 1}]}
    with every_query_loses_its_connection(), caplog.at_level(logging.INFO):
        response = Client(raise_request_exception=False).post(
            "/api/orders/", body, content_type="application/json"
        )

    assert_503(response, CONNECTION_LOST, json=True)
    assert Order.objects.count() == 1
    assert_one_warning_naming(caplog, CONNECTION_LOST, "/api/orders/", method="POST")


@pytest.mark.xfail(
    POOL == "dj_db_conn_pool",
    strict=True,
    reason="SQLAlchemy's pool logs 'Exception during reset or similar' at ERROR, with a traceback, "
    "when a dead connection is given back: the queue-pool engines should invalidate it instead",
)
def test_a_lost_connection_is_logged_once_in_all(shop, caplog):
    with every_query_loses_its_connection(), caplog.at_level(logging.INFO):
        Client(raise_request_exception=False).get("/api/raw/reports/sales/")

    lines = warnings_logged(caplog, ignore=())
    assert [line for line in lines if line[1] != "WARNING"] == []
    # psycopg_pool's note that it discarded the dead connection is the only other line.
    assert [line[0] for line in lines if line[0] != "psycopg.pool"] == ["apps.unavailable"]


class QueryingMiddleware:
    """Runs a query before the view: an error here never reaches process_exception."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        from apps.catalog.models import Category

        Category.objects.count()
        return self.get_response(request)


def test_an_error_outside_the_view_answers_503_through_handler500(shop, caplog, settings):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "tests.test_faults.QueryingMiddleware"]
    with every_query_loses_its_connection(), caplog.at_level(logging.INFO):
        response = Client(raise_request_exception=False).get("/healthz")

    assert_503(response, CONNECTION_LOST, json=False)
    assert_one_warning_naming(caplog, CONNECTION_LOST, "/healthz")


def test_other_database_errors_stay_500(shop, caplog, settings):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "tests.test_faults.QueryingMiddleware"]

    def fail(execute, sql, params, many, context):
        return execute("SELECT no_such_column FROM catalog_category", params, many, context)

    with connections["default"].execute_wrapper(fail), caplog.at_level(logging.INFO):
        response = Client(raise_request_exception=False).get("/healthz")

    assert response.status_code == 500
    assert "Retry-After" not in response
    assert [r.name for r in caplog.records if r.levelno >= logging.ERROR] == ["django.request"]
