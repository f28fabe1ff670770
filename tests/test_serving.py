"""The site under real gunicorn: two gthread workers, and uvicorn workers for ASGI."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from loadtests.measure import Scrape
from tests.conftest import POOL
from tests.servers import get

pytestmark = pytest.mark.django_db(transaction=True)


def test_two_gunicorn_workers_add_up_in_metrics(serve):
    server = serve(workers=2, env={"DB_POOL": POOL})

    def worker_pids() -> set[str]:
        # Each worker writes its values to files named after its pid.
        return {path.stem.rsplit("_", 1)[-1] for path in server.metrics_dir.glob("*.db")}

    sent = 0
    with ThreadPoolExecutor(max_workers=16) as pool:
        # The kernel decides which worker accepts; keep going until both have served.
        while len(worker_pids()) < 2 and sent < 640:
            answers = list(pool.map(lambda _: get(f"{server.base}/readyz"), range(32)))
            assert [status for status, _ in answers] == [200] * 32, answers
            sent += 32
    assert len(worker_pids()) == 2, "both workers served requests"

    # A request is summed up (db_request_*) once gunicorn has closed its
    # response, which may be just after the client read it: allow a moment.
    deadline = time.monotonic() + 5
    while True:
        status, text = get(f"{server.base}/metrics")
        assert status == 200
        scrape = Scrape.parse(text)
        if scrape.total("db_request_checkouts_count", alias="default") >= sent or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert scrape.total("db_connection_checkouts_total", alias="default") == sent
    assert scrape.total("db_connection_hold_seconds_count", alias="default") == sent
    assert scrape.total("db_request_checkouts_count", alias="default") == sent


def test_asgi_entry_runs_under_uvicorn_workers(serve):
    server = serve(workers=1, env={"DB_POOL": POOL, "SERVER": "asgi"})
    status, body = get(f"{server.base}/readyz")
    assert status == 200
    assert '"status": "ok"' in body
    assert "uvicorn" in server.log()
    status, text = get(f"{server.base}/metrics")
    assert Scrape.parse(text).total("db_connection_checkouts_total", alias="default") >= 1


def test_requests_under_asgi_are_summed_up_in_metrics(serve):
    # Django sends request_finished under ASGI from outside the task that ran the
    # middleware; each request must still be counted, with its checkouts.
    server = serve(workers=1, env={"DB_POOL": POOL, "SERVER": "asgi", "EXTERNAL_LATENCY_MS": "10"})
    status, body = get(f"{server.base}/api/orm/products/?page_size=1")
    assert status == 200, body
    paths = [f"/api/async/products/{n}/with-external-call/" for n in range(1, 6)] + ["/readyz"] * 5
    for path in paths:
        get(f"{server.base}{path}")

    deadline = time.monotonic() + 5
    while True:
        scrape = Scrape.parse(get(f"{server.base}/metrics")[1])
        if scrape.total("db_request_checkouts_count", alias="default") >= 11 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    # The product list and the five async views read through the ORM, /readyz once each.
    assert scrape.total("db_request_checkouts_count", alias="default") == 11
    assert scrape.total("db_request_checkouts_sum", alias="default") == scrape.total(
        "db_connection_checkouts_total", alias="default"
    )


def test_metrics_skip_a_values_file_a_worker_has_not_sized_yet(serve):
    server = serve(workers=1, env={"DB_POOL": POOL})
    assert get(f"{server.base}/readyz")[0] == 200
    # A worker creates its file empty and sizes it a moment later; one killed in
    # between leaves it empty for good (prometheus/client_python#1199).
    for name in ("counter_999991.db", "histogram_999992.db", "gauge_livesum_999993.db"):
        (server.metrics_dir / name).touch()

    status, text = get(f"{server.base}/metrics")

    assert status == 200, text
    assert Scrape.parse(text).total("db_connection_checkouts_total", alias="default") >= 1


def test_checked_out_gauge_falls_to_zero_when_the_load_stops(serve):
    # Each request holds its connection through a 300 ms call: the leaky view's open cursor.
    server = serve(workers=2, env={"DB_POOL": POOL, "EXTERNAL_LATENCY_MS": "300", "DB_POOL_MAX_SIZE": "4"})
    with ThreadPoolExecutor(max_workers=16) as pool:
        for _ in range(2):
            answers = list(pool.map(lambda _: get(f"{server.base}/api/raw/leaky/")[0], range(16)))
            assert answers == [200] * 16

    # A request is summed up just after its client has the answer: wait for the
    # last ones. A scrape refreshes the gauges of the worker that answers it only;
    # the other's are as its last request left them, which must be 0 by then.
    deadline = time.monotonic() + 5
    while True:
        status, text = get(f"{server.base}/metrics")
        assert status == 200
        scrape = Scrape.parse(text)
        if scrape.total("db_requests_ended_holding_total", alias="default") == 32:
            break
        assert time.monotonic() < deadline, "the requests were never summed up"
        time.sleep(0.05)
    assert scrape.total("db_connections_checked_out", alias="default") == 0
    assert scrape.total("db_pool_connections", alias="default", state="in_use") == 0
