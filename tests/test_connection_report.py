"""A hold split into time in the database and idle time, per view; manage.py connection_report."""

from __future__ import annotations

import json
import threading
import time
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connections, transaction
from django.test import Client

from apps.metrics import prediction
from backends import instrumentation
from backends.session import hold_connection
from loadtests.measure import Scrape

IDLE_SECONDS = 0.2
QUERY_SECONDS = 0.05


class Returned(instrumentation.CheckoutWatcher):
    """Each checkout of one alias as the watchers hear it: (hold, database, kept)."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.checkouts: list[tuple[float, float, float]] = []

    def returned(self, connection, hold_seconds, wait_seconds, database_seconds, kept_seconds) -> None:
        if connection.alias == self.alias:
            self.checkouts.append((hold_seconds, database_seconds, kept_seconds))

    def total(self) -> tuple[float, float, float]:
        hold, database, kept = (sum(column) for column in zip(*self.checkouts, strict=True))
        return hold, database, kept


@pytest.fixture
def returned():
    watchers = []

    def watch(alias: str) -> Returned:
        watcher = Returned(alias)
        instrumentation.watch(watcher)
        watchers.append(watcher)
        return watcher

    yield watch
    for watcher in watchers:
        instrumentation.unwatch(watcher)


def query_then_wait(alias: str) -> None:
    """A view's shape: one slow query, its cursor closed, then idle time (an external call)."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", [QUERY_SECONDS])
        cursor.fetchall()
    time.sleep(IDLE_SECONDS)


pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.mark.parametrize("release", ["request", "cursor"])
def test_idle_time_is_held_by_stock_django_and_given_back_by_release(database, returned, release):
    alias = database(release=release)
    watcher = returned(alias)
    query_then_wait(alias)
    connections[alias].close()  # the request's end
    hold, database_seconds, kept = watcher.total()
    assert QUERY_SECONDS <= database_seconds < QUERY_SECONDS + 0.1
    assert kept == pytest.approx(database_seconds, abs=0.01)
    if release == "request":  # stock Django holds through the wait; release does not
        assert hold >= QUERY_SECONDS + IDLE_SECONDS
    else:
        assert hold < QUERY_SECONDS + 0.1


@pytest.mark.parametrize("release", ["request", "cursor"])
def test_a_transaction_is_kept_whole_though_idle(database, returned, release):
    alias = database(release=release)
    watcher = returned(alias)
    with transaction.atomic(using=alias):
        query_then_wait(alias)
    connections[alias].close()
    hold, database_seconds, kept = watcher.total()
    assert database_seconds < IDLE_SECONDS
    assert kept >= QUERY_SECONDS + IDLE_SECONDS
    assert kept <= hold


@pytest.mark.parametrize("release", ["request", "cursor"])
def test_a_hold_connection_block_is_kept_whole(database, returned, release):
    alias = database(release=release)
    watcher = returned(alias)
    with hold_connection(using=alias):
        query_then_wait(alias)
    connections[alias].close()
    _, _, kept = watcher.total()
    assert kept >= QUERY_SECONDS + IDLE_SECONDS


def test_a_pinned_checkout_is_kept_from_the_pin_on(database, returned):
    alias = database(release="cursor")
    watcher = returned(alias)
    time_before_pin = 0.1
    connections[alias].ensure_connection()
    time.sleep(time_before_pin)
    with connections[alias].cursor() as cursor:
        cursor.execute("SET application_name = 'pinned'")
    time.sleep(IDLE_SECONDS)
    connections[alias].close()
    hold, _, kept = watcher.total()
    assert IDLE_SECONDS <= kept < hold - time_before_pin / 2


def test_a_checkout_ended_with_a_cursor_left_open_is_kept_whole(database, returned):
    alias = database(release="request")
    watcher = returned(alias)
    cursor = connections[alias].cursor()
    cursor.execute("SELECT 1")
    time.sleep(IDLE_SECONDS)
    connections[alias].close()  # the cursor is still open: a release engine would have kept it too
    hold, _, kept = watcher.total()
    assert kept == hold >= IDLE_SECONDS


def view_totals(client: Client) -> dict[str, prediction.ViewTotals]:
    return Scrape.parse(client.get("/metrics").content.decode()).views()


def test_each_view_counts_its_requests_hold_and_time_in_the_database(client):
    connections["default"].close()
    before = view_totals(client)
    for _ in range(3):
        assert client.get("/readyz").status_code == 200
    client.get("/no-such-page/")
    window = prediction.since(view_totals(client), before)
    readyz = window["readyz"]
    assert readyz.requests == 3
    assert 0 < readyz.database <= readyz.kept <= readyz.hold
    # A path no pattern matches queries nothing here, so it is not counted at all.
    assert window.get("(unresolved)", prediction.ViewTotals()).requests == 0


def test_the_report_predicts_from_what_the_site_did_while_it_measured(client):
    connections["default"].close()
    stop = threading.Event()

    def traffic() -> None:
        own = Client()
        while not stop.is_set():
            own.get("/readyz")
        connections.close_all()

    sender = threading.Thread(target=traffic)
    sender.start()
    out = StringIO()
    try:
        call_command("connection_report", "--json", "--seconds", "1", stdout=out)
    finally:
        stop.set()
        sender.join(10)
    report = json.loads(out.getvalue())
    assert set(report["total"]) >= {"connections_now", "connections_with_release", "suggested_pool"}
    (readyz,) = [view for view in report["views"] if view["view"] == "readyz"]
    assert readyz["requests_per_s"] > 1
    assert 0 < readyz["db_s_per_s"] <= readyz["hold_s_per_s"]
    assert report["total"]["connections_now"] >= readyz["hold_s_per_s"] - 0.001  # each rounded
    assert report["total"]["suggested_pool"] >= 1


def test_the_report_says_when_nothing_used_the_database():
    out = StringIO()
    call_command("connection_report", "--seconds", "0.1", stdout=out)
    assert "No request used the database while measuring" in out.getvalue()


def test_a_site_that_cannot_be_read_is_named_with_the_likely_cause():
    with pytest.raises(CommandError, match="METRICS_ALLOWED_IPS"):
        call_command("connection_report", "--url", "http://127.0.0.1:9", "--seconds", "0.1")


@pytest.mark.parametrize(("average", "pool"), [(0.0, 1), (0.25, 2), (1.0, 3), (4.0, 8), (30.0, 41)])
def test_the_suggested_pool_leaves_room_for_requests_arriving_together(average, pool):
    assert prediction.suggested_pool(average) == pool


def test_rates_are_shared_by_the_workers_each_with_its_own_pool():
    window = {"v": prediction.ViewTotals(requests=100, hold=40, database=2, kept=4)}
    one = prediction.predict(window, seconds=10)
    four = prediction.predict(window, seconds=10, workers=4)
    assert (one.connections_now, one.connections_with_release) == (4.0, 0.4)
    assert one.as_json()["views"][0]["idle_share"] == 0.9
    assert (one.suggested_pool, four.suggested_pool) == (2, 1)
