"""Hold time made visible: /metrics, Server-Timing, the dashboard, probes and 503s."""

from __future__ import annotations

import logging
import re
import threading
from contextlib import contextmanager

import pytest
from django.conf import settings
from django.contrib.auth.models import Group
from django.db import connections, transaction

from loadtests.measure import Scrape
from tests.conftest import POOL, Worker

pytestmark = pytest.mark.django_db(transaction=True)

ENGINE = "release" if settings.DB_RELEASE == "cursor" else "baseline"
LABELS = {"alias": "default", "engine": ENGINE, "pool": POOL}


@pytest.fixture(autouse=True)
def no_connection_held_at_start():
    # A real server closes leftover connections when a request starts; the test
    # client does not, and test set-up may leave one checked out.
    connections["default"].close()


@contextmanager
def every_connection_taken():
    """Other threads hold every connection of the default pool, each in a transaction."""
    max_size = connections["default"].pool_usage().max_size
    holding, release = threading.Barrier(max_size + 1), threading.Event()

    def hold_a_connection():
        with transaction.atomic():
            Group.objects.count()
            holding.wait(5)
            release.wait(10)

    workers = [Worker(hold_a_connection, f"holder{i}") for i in range(max_size)]
    for worker in workers:
        worker.start()
    try:
        holding.wait(5)
        yield
    finally:
        release.set()
        for worker in workers:
            worker.finish()


def sample_total(text: str, name: str, **labels: str) -> float:
    return Scrape.parse(text).total(name, **labels)


def scrape(client) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    return response.content.decode()


def test_a_database_request_carries_server_timing(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    timing = response["Server-Timing"]
    assert re.search(r"db-hold;dur=\d+\.\d{3}", timing)
    assert re.search(r"db-wait;dur=\d+\.\d{3}", timing)
    assert 'db-checkouts;desc="1 checkout(s)"' in timing


def test_a_request_without_queries_reports_no_checkouts(client):
    response = client.get("/healthz")
    assert response.json() == {"status": "ok"}
    assert 'db-checkouts;desc="0 checkout(s)"' in response["Server-Timing"]


def test_checkouts_hold_and_wait_are_recorded(client):
    before = scrape(client)
    for _ in range(3):
        assert client.get("/readyz").status_code == 200
    after = scrape(client)

    def grew(name: str) -> float:
        return sample_total(after, name, **LABELS) - sample_total(before, name, **LABELS)

    assert grew("db_connection_checkouts_total") == 3
    assert grew("db_connection_hold_seconds_count") == 3
    assert grew("db_connection_hold_seconds_sum") > 0
    assert grew("db_connection_wait_seconds_count") == 3
    assert grew("db_request_hold_seconds_count") == 3
    assert grew("db_request_checkouts_sum") == 3


def test_pool_gauges_show_the_pool(client):
    client.get("/readyz")
    text = scrape(client)
    assert sample_total(text, "db_pool_max_connections", **LABELS) == int(
        settings.DATABASES["default"].get("OPTIONS", {}).get("pool", {}).get("max_size")
        or settings.DATABASES["default"]["POOL_OPTIONS"]["POOL_SIZE"]
    )
    assert sample_total(text, "db_pool_connections", state="idle", **LABELS) >= 0
    assert "db_connections_checked_out" in text


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_pool_not_opened_yet_reports_the_size_it_will_have(database):
    # A site that has served nothing yet: the comparison reads its pool size from /metrics.
    alias = database(max_size=3)
    usage = connections[alias].pool_usage()
    assert (usage.size, usage.max_size, usage.checked_out) == (0, 3, 0)
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
    assert connections[alias].pool_usage().max_size == 3


@pytest.mark.skipif(POOL != "native", reason="psycopg_pool's own default")
def test_a_native_pool_given_only_a_min_size_reports_psycopg_pools_default_max():
    from backends.nativepool import configured_max_size

    assert configured_max_size({"OPTIONS": {"pool": {"min_size": 2}}}) == 2
    assert configured_max_size({"OPTIONS": {"pool": True}}) == 4
    assert configured_max_size({"OPTIONS": {"pool": {"min_size": 1, "max_size": 8}}}) == 8


def test_checked_out_gauge_counts_connections_other_threads_hold(client):
    with every_connection_taken():
        taken = scrape(client)
    after = scrape(client)
    max_size = connections["default"].pool_usage().max_size
    assert sample_total(taken, "db_connections_checked_out", **LABELS) == max_size
    assert sample_total(after, "db_connections_checked_out", **LABELS) == 0


def test_exhausted_pool_answers_503_with_retry_after(client, caplog):
    before = scrape(client)
    with every_connection_taken(), caplog.at_level(logging.WARNING, logger="apps.metrics"):
        response = client.get("/products/")

    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    assert "every pooled connection is in use" in response.content.decode()
    assert any("503 for GET /products/" in r.getMessage() for r in caplog.records)
    timeouts = sample_total(scrape(client), "db_pool_timeouts_total", **LABELS)
    assert timeouts == sample_total(before, "db_pool_timeouts_total", **LABELS) + 1


def test_metrics_and_dashboard_are_refused_to_other_addresses(client):
    for path in ("/metrics", "/pool/", "/pool/panel/"):
        response = client.get(path, REMOTE_ADDR="203.0.113.9")
        assert response.status_code == 403, path


def test_metrics_can_be_opened_to_a_network(client, settings):
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8"]
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="192.168.1.1").status_code == 403


def test_dashboard_draws_the_distributions(client):
    client.get("/readyz")
    page = client.get("/pool/")
    assert page.status_code == 200
    html = page.content.decode()
    for text in ("Checked out now", "Hold time per checkout", "Wait for a connection",
                 "Checkouts per request", "Pool timeouts", "Leaked cursors", "<svg"):  # fmt: skip
        assert text in html
    assert ENGINE in html
    panel = client.get("/pool/panel/").content.decode()
    assert "<rect" in panel
    assert "<html" not in panel


def test_readyz_answers_503_when_no_connection_can_be_borrowed(client):
    with every_connection_taken():
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
