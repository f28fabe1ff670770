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
    server = serve(
        "-k", "uvicorn_worker.UvicornWorker", "project.asgi:application", workers=1, env={"DB_POOL": POOL}
    )
    status, body = get(f"{server.base}/readyz")
    assert status == 200
    assert '"status": "ok"' in body
    status, text = get(f"{server.base}/metrics")
    assert Scrape.parse(text).total("db_connection_checkouts_total", alias="default") >= 1
