"""Faults: transient database trouble answers 503 with Retry-After, logged once; nothing else breaks.

Real faults only: server sessions terminated with pg_terminate_backend, a pool
whose every connection is taken, a PostgreSQL of our own stopped and started.
Run alone with `pytest -m faults`.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import connections
from django.db.backends.postgresql.base import DatabaseWrapper as PostgresWrapper
from django.test import AsyncClient, Client

from apps.catalog.models import Product
from apps.web.unavailable import RETRY_AFTER_SECONDS
from backends.errors import CONNECTION_LOST, POOL_EXHAUSTED
from loadtests import site as launcher
from loadtests.pgbouncer import PgBouncer
from tests.conftest import POOL, UnsafeTestDatabase, Worker, check_is_test_database
from tests.servers import ROOT, database_url_for_tests, direct_connection, free_port
from tests.test_metrics import every_connection_taken
from tests.test_shop_support import exports_complete, make_order, make_shop

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]


# Helpers ------------------------------------------------------------------------------------------


def terminate(pid: int) -> None:
    with direct_connection() as conn:
        conn.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])


@contextmanager
def every_query_loses_its_connection(alias: str = "default", first: int | None = None):
    """Each query this thread runs on `alias` (or the `first` few) finds its server session terminated."""
    queries = 0

    def terminate_then_execute(execute, sql, params, many, context):
        nonlocal queries
        queries += 1
        if first is not None and queries > first:
            return execute(sql, params, many, context)
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
    assert (name, level) == ("apps.web.unavailable", "WARNING")
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


@pytest.mark.direct_connection
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


@pytest.mark.direct_connection
def test_an_async_view_answers_503_logged_once(shop, caplog):
    path = f"/api/async/products/{shop.novel.pk}/summary/"
    with every_query_loses_its_connection(), caplog.at_level(logging.INFO):
        response = async_to_sync(AsyncClient(raise_request_exception=False).get)(path)

    assert_503(response, CONNECTION_LOST, json=True)
    assert_one_warning_naming(caplog, CONNECTION_LOST, path)


@pytest.mark.direct_connection
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


@pytest.mark.direct_connection
def test_a_lost_connection_is_logged_once_in_all(shop, caplog):
    with every_query_loses_its_connection(), caplog.at_level(logging.INFO):
        Client(raise_request_exception=False).get("/api/raw/reports/sales/")

    lines = warnings_logged(caplog, ignore=())
    assert [line for line in lines if line[1] != "WARNING"] == []
    # psycopg_pool's note that it discarded the dead connection is the only other line.
    assert [line[0] for line in lines if line[0] != "psycopg.pool"] == ["apps.web.unavailable"]


class QueryingMiddleware:
    """Runs a query before the view: an error here never reaches process_exception."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        from apps.catalog.models import Category

        Category.objects.count()
        return self.get_response(request)


@pytest.mark.direct_connection
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


# Nothing lost: the suite touches test databases only ------------------------------------------------


def own_connection(server, dbname: str = "postgres", user: str = "postgres") -> psycopg.Connection:
    running = server.running_server()
    return psycopg.connect(
        host=str(running.socket_dir), port=running.port, user=user, dbname=dbname, autocommit=True
    )


@pytest.fixture
def real_database(own_postgres):
    """A database called "shop_real" with a table of data, on a server of our own; dropped afterwards."""
    with own_connection(own_postgres) as conn:
        conn.execute("DROP DATABASE IF EXISTS shop_real WITH (FORCE)")
        conn.execute("DROP DATABASE IF EXISTS test_shop_real WITH (FORCE)")
        conn.execute("CREATE DATABASE shop_real")
    with own_connection(own_postgres, "shop_real") as conn:
        conn.execute("CREATE TABLE precious (n int)")
        conn.execute("INSERT INTO precious SELECT generate_series(1, 3)")
    yield "shop_real"
    with own_connection(own_postgres) as conn:
        conn.execute("DROP DATABASE IF EXISTS shop_real WITH (FORCE)")
        conn.execute("DROP DATABASE IF EXISTS test_shop_real WITH (FORCE)")


def test_the_suite_refuses_a_server_whose_maintenance_database_it_cannot_reach(own_postgres, real_database):
    """As behind PgBouncer listing only the site's database: Django fell back to it, flushes emptied it."""
    with own_connection(own_postgres) as conn:
        conn.execute("DROP ROLE IF EXISTS shop_owner")
        conn.execute("CREATE ROLE shop_owner LOGIN CREATEDB")
        conn.execute("REVOKE CONNECT ON DATABASE postgres FROM PUBLIC")
    try:
        url = own_postgres.running_server().url(real_database).replace("postgres@", "shop_owner@", 1)
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "tests/test_shop_seed.py::test_seed_small_fills_every_table"],
            cwd=ROOT, env={**os.environ, "DATABASE_URL": url}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        with own_connection(own_postgres) as conn:
            conn.execute("GRANT CONNECT ON DATABASE postgres TO PUBLIC")

    output = run.stdout + run.stderr
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert "Cannot connect to the 'postgres' database" in output
    assert "'shop_real', whose tables they empty" in output
    with own_connection(own_postgres, real_database) as conn:
        assert conn.execute("SELECT count(*) FROM precious").fetchone() == (3,)
        migrated = conn.execute("SELECT to_regclass('django_migrations')").fetchone()
        assert migrated == (None,), "nothing ran there"
    with own_connection(own_postgres) as conn:
        assert conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'test_%'").fetchall() == []


def test_a_database_whose_name_does_not_start_with_test_is_refused(own_postgres, real_database):
    running = own_postgres.running_server()
    settings_dict = {
        **connections["default"].settings_dict,
        "ENGINE": "django.db.backends.postgresql",
        "OPTIONS": {},
        "HOST": str(running.socket_dir),
        "PORT": running.port,
        "USER": "postgres",
        "PASSWORD": "",
        "NAME": real_database,
    }
    wrapper = PostgresWrapper(settings_dict, alias="not_a_test_database")
    try:
        with pytest.raises(UnsafeTestDatabase, match="connected to the database 'shop_real', not to a test"):
            check_is_test_database(wrapper)
    finally:
        wrapper.close()


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_every_alias_of_this_run_is_on_a_test_database():
    for alias in connections:
        assert check_is_test_database(connections[alias]).startswith("test_")


# Under load: sessions killed, the server stopped and started ------------------------------------------


SITE_APP_NAME = "faults-site"  # the site's connections, as pg_stat_activity names them (PGAPPNAME)


class Load:
    """Threads that send `requests` (a list of (method, path, body)) round and round until stopped."""

    def __init__(self, base: str, requests: list[tuple[str, str, dict | None]], threads: int = 6) -> None:
        self.base = base
        self.requests = requests
        self.answers: list[Answer] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)

    def run(self, offset: int) -> None:
        i = offset
        while not self.stopping.is_set():
            method, path, body = self.requests[i % len(self.requests)]
            self.answers.append(send(self.base, method, path, body))
            i += 1

    def by_path(self, paths) -> list[Answer]:
        return [answer for answer in self.answers if answer.path in paths]

    def wait_for_answers(self, sent_after: float, timeout: float = 30) -> None:
        """Wait until every path has been answered to a request sent after `sent_after` (time.monotonic()).

        A busy machine answers slowly: the fault tests wait for answers, not for a fixed time.
        """
        deadline = time.monotonic() + timeout
        paths = {path for _, path, _ in self.requests}
        while (answered := {a.path for a in list(self.answers) if a.sent > sent_after}) != paths:
            assert time.monotonic() < deadline, f"no answer in {timeout} s for {sorted(paths - answered)}"
            time.sleep(0.05)


@dataclass
class Answer:
    path: str
    sent: float  # time.monotonic() when the request went
    at: float  # and when the answer came
    status: int
    retry_after: str | None
    body: bytes
    cut: bool = False  # the body stopped short (a stream whose connection broke after its status)


def send(base: str, method: str, path: str, body: dict | None = None) -> Answer:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{base}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
    )
    cut = False
    sent = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, headers = response.status, response.headers
            try:
                content = response.read()
            except http.client.IncompleteRead as error:
                content, cut = error.partial, True
    except urllib.error.HTTPError as error:
        status, headers, content = error.code, error.headers, error.read()
    except (OSError, http.client.HTTPException) as error:  # no answer at all: never expected
        status, headers, content = 0, {}, str(error).encode()
    return Answer(path, sent, time.monotonic(), status, headers.get("Retry-After"), content, cut)


def assert_only_200s_and_503s_with_retry_after(answers: list[Answer]) -> None:
    unexpected = [(a.path, a.status, a.body[:200]) for a in answers if a.status not in (200, 201, 404, 503)]
    assert unexpected == []
    # Every answer ends as HTTP says it should, a stream cut short included.
    assert [a.path for a in answers if a.cut] == []
    assert [a.path for a in answers if a.status == 503 and a.retry_after != str(RETRY_AFTER_SECONDS)] == []


def assert_exports_are_whole_or_told_apart(answers: list[Answer], log: str) -> None:
    """Each export answered 200 is whole, or the load test's check says it was cut short, as the log does."""
    exports = [a.body.decode() for a in answers if a.path == "/orders/export.csv" and a.status == 200]
    cut_short = exports_complete(exports).count(False)
    assert cut_short == log.count("WARNING apps.orders.export CSV export cut short after")


def assert_log_is_clean(log: str) -> None:
    """No traceback and no ERROR line from Django: a shed request is one WARNING line."""
    assert "Traceback" not in log, log[-3000:]
    assert " ERROR django.request " not in log, log[-3000:]


@pytest.fixture
def killing_site(serve, shop):
    return serve(
        workers=2,
        env={
            "DB_POOL": POOL,
            "PGAPPNAME": SITE_APP_NAME,
            "EXTERNAL_LATENCY_MS": "20",
            "DB_POOL_TIMEOUT": "2",
        },
    )


def kill_site_sessions_until(stop: threading.Event, every: float) -> int:
    killed = 0
    with direct_connection() as conn:
        while not stop.wait(every):
            killed += conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s AND datname = current_database()",
                [SITE_APP_NAME],
            ).fetchone()[0]
    return killed


@pytest.mark.direct_connection
@pytest.mark.skipif(
    settings.DB_RELEASE != "cursor", reason="the release engines retry reads, stock Django not"
)
def test_an_orm_page_whose_connection_is_killed_under_its_query_is_answered(shop, caplog):
    with every_query_loses_its_connection(first=1), caplog.at_level(logging.INFO):
        response = Client(raise_request_exception=False).get(f"/api/orm/products/{shop.novel.pk}/")

    assert response.status_code == 200
    assert response.json()["sku"] == "BOOK-1"
    assert warnings_logged(caplog) == []


@pytest.mark.direct_connection
def test_killed_sessions_cost_orm_reads_nothing_and_cut_requests_a_503(killing_site, shop):
    orm_reads = [
        "/products/",
        f"/products/{shop.novel.pk}/",
        f"/api/orm/products/{shop.novel.pk}/",
        f"/api/orm/products/{shop.atlas.pk}/with-external-call/",
        f"/api/async/products/{shop.kettle.pk}/summary/",
    ]
    Product.objects.filter(pk=shop.novel.pk).update(stock=1_000_000)
    order = {"customer": shop.alan.pk, "lines": [{"product": shop.novel.pk, "quantity": 1}]}
    cut_if_killed = [  # raw SQL and transactions: a session killed under them fails them
        ("GET", "/api/raw/reports/sales/", None),
        ("GET", f"/api/raw/products/{shop.kettle.pk}/with-external-call/", None),
        ("GET", "/orders/export.csv", None),
        ("POST", "/api/orders/", order),
    ]
    stop = threading.Event()
    with Load(killing_site.base, [("GET", path, None) for path in orm_reads] + cut_if_killed) as load:
        killer = Worker(lambda: kill_site_sessions_until(stop, every=0.2), "killer")
        killer.start()
        time.sleep(4)
        stop.set()
        killed = killer.finish()
    # Every kill found sessions to end, and the requests kept coming meanwhile.
    assert killed >= 20
    assert len(load.answers) >= 50

    assert_only_200s_and_503s_with_retry_after(load.answers)
    assert_exports_are_whole_or_told_apart(load.answers, killing_site.output())
    assert_log_is_clean(killing_site.output())
    if settings.DB_RELEASE == "cursor":
        failed_reads = [(a.path, a.status, a.body[:200]) for a in load.by_path(orm_reads) if a.status != 200]
        assert failed_reads == []


@pytest.fixture
def own_site(own_postgres, tmp_path):
    """The shop under gunicorn on the session's own PostgreSQL (migrated, no data), which tests may stop."""
    url = own_postgres.ensure_running("shop_site").url("shop_site")
    env = {**os.environ, "DATABASE_URL": url}
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True, timeout=120
    )
    site = launcher.Gunicorn(
        free_port(),
        tmp_path,
        {
            "DATABASE_URL": url,
            "DB_POOL": POOL,
            "GUNICORN_WORKERS": "1",
            "GUNICORN_THREADS": "4",
            "DB_POOL_TIMEOUT": "1",
            "EXTERNAL_LATENCY_MS": "20",
        },
    )
    site.start()
    try:
        site.wait_until_ready(60)
        yield site
    finally:
        site.stop()
        own_postgres.ensure_running()  # for the next test, whatever this one left


@pytest.mark.direct_connection
def test_a_stopped_database_answers_503_and_the_site_serves_again_a_moment_after_it_is_back(
    own_site, own_postgres
):
    paths = [
        "/readyz",
        "/products/",
        "/api/orm/products/",
        "/api/raw/reports/sales/",
        "/orders/export.csv",
        "/api/async/products/1/summary/",  # 404 while up: there are no products
    ]
    with Load(own_site.url, [("GET", path, None) for path in paths], threads=4) as load:
        load.wait_for_answers(sent_after=0)
        stopping = time.monotonic()
        own_postgres.stop()
        stopped = time.monotonic()
        # Down for at least a second, and until every path has been answered (with 503s) meanwhile.
        time.sleep(1)
        load.wait_for_answers(sent_after=stopped)
        starting = time.monotonic()
        own_postgres.ensure_running()
        started = time.monotonic()
        time.sleep(4)

    assert_only_200s_and_503s_with_retry_after(load.answers)
    assert_exports_are_whole_or_told_apart(load.answers, own_site.log())
    before = [a.status for a in load.answers if a.at < stopping]
    down = [a.status for a in load.answers if stopped < a.sent and a.at < starting]
    assert before and set(before) <= {200, 404}
    assert down and set(down) == {503}
    # Serving again: from the first answer after the restart on, nothing but answers.
    after = [a for a in load.answers if a.sent > started]
    first_served = next(i for i, a in enumerate(after) if a.status != 503)
    assert {a.status for a in after[first_served:]} <= {200, 404}
    recovered_in = after[first_served].at - started
    assert recovered_in < 3, f"serving again {recovered_in:.2f}s after PostgreSQL was back"

    log = own_site.log()
    assert_log_is_clean(log)
    assert "503 for GET /readyz: database unreachable" in log
    assert "pool exhausted" not in log


# Bad input: never a 5xx, never a change -------------------------------------------------------------------

# Every URL pattern of the site (the admin's own apart), with its arguments filled in.
URLS = {
    "": "/",
    "healthz": "/healthz",
    "readyz": "/readyz",
    "metrics": "/metrics",
    "pool/": "/pool/",
    "pool/panel/": "/pool/panel/",
    "products/": "/products/",
    "products/<int:product_id>/": "/products/{id}/",
    "api/orm/products/": "/api/orm/products/",
    "api/orm/products/<int:product_id>/": "/api/orm/products/{id}/",
    "api/orm/products/<int:product_id>/with-external-call/": "/api/orm/products/{id}/with-external-call/",
    "api/raw/products/<int:product_id>/with-external-call/": "/api/raw/products/{id}/with-external-call/",
    "api/raw/leaky/": "/api/raw/leaky/",
    "api/async/products/<int:product_id>/summary/": "/api/async/products/{id}/summary/",
    "api/async/products/<int:product_id>/with-external-call/": "/api/async/products/{id}/with-external-call/",
    "api/async/products/<int:product_id>/with-time-limit/": "/api/async/products/{id}/with-time-limit/",
    "orders/new/": "/orders/new/",
    "orders/export.csv": "/orders/export.csv",
    "orders/async/export.csv": "/orders/async/export.csv",
    "orders/<slug:number>/": "/orders/{number}/",
    "api/orders/": "/api/orders/",
    "reports/sales/": "/reports/sales/",
    "api/raw/reports/sales/": "/api/raw/reports/sales/",
    "api/raw/reports/sales/daily/": "/api/raw/reports/sales/daily/",
}
ADMIN_URLS = ["/admin/", "/admin/login/"]

IDS = ["0", "1", str(2**31), str(2**63), "9" * 40]
ORDER_NUMBERS = ["S-1", "no-such-order", "x" * 300, "S-1--", "_-_"]

# Query strings, sent to every URL: out-of-range, malformed, oversized, hostile.
QUERIES = [
    "page=0", "page=-1", "page=abc", "page=99999999999999999999999", "page=1e9", "page_size=100000",
    "category=%ff%fe", "category=" + "x" * 5000, "q=%00", "q=" + "%e2%80%ae" * 200,
    "q='; DROP TABLE orders_order; --",
    "min_price=NaN", "min_price=1e400", "max_price=-Infinity", "min_price=5&max_price=1",
    "days=0", "days=-1", "days=99999999999999999999", "top=99999999999999999999",
    "start=9999-12-30&end=9999-12-31", "start=0001-01-01&end=0001-01-02", "start=0000-00-00&end=2024-02-30",
    "start=2024-01-01&end=2024-01-02&days=3", "tz=Mars/Olympus", "tz=" + "A" * 500, "tz=../../etc/passwd",
    "product=" + "9" * 5000, "product=-1", "%ff=%fe&%00=%00", "page=1&page=2&page=x",
]  # fmt: skip

# Bodies, sent with every method that may carry one.
BODIES = [
    ("application/json", b"{"),
    ("application/json", b"[" * 50_000),
    ("application/json", b'{"customer": 1e400, "lines": [{"product": 1, "quantity": 1}]}'),
    ("application/json", b'{"customer": 99999999999999999999999, "lines": [{"product": 1, "quantity": 1}]}'),
    ("application/json", b'{"customer": 1, "lines": [{"product": 1, "quantity": -5}]}'),
    ("application/json", b'{"customer": 1, "lines": [{"product": "1", "quantity": 1}]}'),
    ("application/json", b'{"customer": 1, "lines": [' + b'{"product": 1, "quantity": 1},' * 2000 + b"1]}"),
    ("application/json", "\ufeff{}".encode()),
    ("application/x-www-form-urlencoded", b"customer=1&product=99999999999999999999&quantity=1"),
    ("application/x-www-form-urlencoded", b"customer=%00&product=%ff&quantity=1e9"),
    ("text/plain", b"\x00\xff" * 100),
]


def site_url_patterns(patterns=None, prefix: str = "") -> list[str]:
    from django.urls import URLResolver, get_resolver

    found = []
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            if route != "admin/":  # the admin's own pages: tests/test_shop_admin.py
                found += site_url_patterns(pattern.url_patterns, route)
        else:
            found.append(route)
    return found


def fingerprint() -> dict[str, tuple]:
    """Every table's row count and a digest of its rows."""
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1")
        tables = [name for (name,) in cursor.fetchall()]
        prints = {}
        for table in tables:
            quoted = connections["default"].ops.quote_name(table)
            rows = "coalesce(string_agg(t::text, '|' ORDER BY t::text), '')"
            cursor.execute(f"SELECT count(*), md5({rows}) FROM {quoted} t")
            prints[table] = cursor.fetchone()
    return prints


def test_the_bad_input_table_covers_every_url():
    assert sorted(site_url_patterns()) == sorted(URLS)


# The URLs that take a body; the others refuse every method but GET and HEAD, with any body.
TAKE_A_BODY = {"/api/orders/", "/orders/new/", "/admin/login/"}


def test_bad_input_to_every_url_is_never_a_5xx_and_changes_nothing(shop, settings):
    settings.EXTERNAL_LATENCY_MS = 0
    ids = [*IDS, str(shop.novel.pk)]
    paths = [*ADMIN_URLS, *(t.format(id=shop.novel.pk, number="S-1") for t in URLS.values())]
    odd_paths = [
        t.format(id=i, number=n) for t in URLS.values() if "{" in t for i in ids for n in ORDER_NUMBERS
    ]
    client = Client(raise_request_exception=False)
    before = fingerprint()

    answers = []

    def send(method: str, path: str, **kwargs) -> None:
        response = getattr(client, method)(path, **kwargs)
        answers.append((method, path, kwargs.get("data", b"")[:40], response.status_code))
        response.close()  # as a server does, the body read or not

    for path in paths:
        for query in QUERIES:
            send("get", f"{path}?{query}")
        for method in ("post", "put", "patch", "delete"):
            for content_type, body in BODIES if path in TAKE_A_BODY else BODIES[:1]:
                send(method, path, data=body, content_type=content_type)
    for path in set(odd_paths):
        send("get", path)

    assert [answer for answer in answers if answer[-1] >= 500] == []
    assert fingerprint() == before


# The export behind PgBouncer ------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("pgbouncer") is None, reason="needs a pgbouncer binary")
def test_exports_stream_whole_behind_pgbouncer_in_transaction_mode(shop, tmp_path):
    """Its server-side cursor lives in a transaction, which PgBouncer keeps on one server connection."""
    from apps.orders.export import CHUNK_SIZE
    from apps.orders.models import Order, OrderLine

    order = Order.objects.create(number="S-BIG", customer=shop.ada, status=Order.Status.PAID)
    # More lines than one fetch from the cursor: the second fetch is what PgBouncer broke.
    products = Product.objects.bulk_create(
        Product(category=shop.books, sku=f"BULK-{i}", name=f"Bulk {i}", price=1, stock=1)
        for i in range(CHUNK_SIZE + 500)
    )
    OrderLine.objects.bulk_create(
        OrderLine(order=order, product=product, quantity=1, unit_price=product.price) for product in products
    )
    connections["default"].close()
    with PgBouncer(database_url_for_tests(), free_port(), server_connections=2, workdir=tmp_path) as bouncer:
        site = launcher.Gunicorn(
            free_port(),
            tmp_path,
            {"DATABASE_URL": bouncer.url, "DB_POOL": POOL, "GUNICORN_WORKERS": "1", "GUNICORN_THREADS": "6"},
        )
        site.start()
        try:
            site.wait_until_ready(60)
            requests = [("GET", "/orders/export.csv", None), ("GET", "/api/raw/reports/sales/", None)]
            with Load(site.url, requests, threads=6) as load:
                time.sleep(3)
            log = site.log()
        finally:
            site.stop()

    exports = [a for a in load.answers if a.path == "/orders/export.csv"]
    assert len(exports) >= 3
    assert [a.status for a in exports] == [200] * len(exports)
    assert all(exports_complete([a.body.decode() for a in exports]))
    assert "cut short" not in log
