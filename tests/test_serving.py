"""The site under real gunicorn: two gthread workers, and uvicorn workers for ASGI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest
from django.db import connections

from tests.conftest import POOL
from tests.metrics_helpers import sample_total

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.django_db(transaction=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url_for_tests() -> str:
    s = connections["default"].settings_dict
    password = f":{quote(s['PASSWORD'], safe='')}" if s["PASSWORD"] else ""
    return f"postgres://{s['USER']}{password}@{quote(s['HOST'], safe='')}:{s['PORT']}/{s['NAME']}"


def get(url: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


class Gunicorn:
    def __init__(self, tmp_path: Path, *extra: str, workers: int = 2) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.metrics_dir = tmp_path / "metrics"
        env = {
            **os.environ,
            "DATABASE_URL": database_url_for_tests(),
            "DB_POOL": POOL,
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "GUNICORN_BIND": f"127.0.0.1:{self.port}",
            "GUNICORN_WORKERS": str(workers),
            "GUNICORN_THREADS": "4",
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
        }
        command = [sys.executable, "-m", "gunicorn", "-c", "project/gunicorn.conf.py", *extra]
        self.log = (tmp_path / "gunicorn.log").open("w+")
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self.log, stderr=self.log)

    def wait_until_up(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output()
            try:
                if get(f"{self.base}/healthz", timeout=1)[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"gunicorn did not answer in {timeout}s\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=20)
        self.log.close()


@pytest.fixture
def serve(tmp_path):
    servers: list[Gunicorn] = []

    def start(*extra: str, workers: int = 2) -> Gunicorn:
        server = Gunicorn(tmp_path, *extra, workers=workers)
        servers.append(server)
        server.wait_until_up()
        return server

    yield start
    for server in servers:
        server.stop()


def test_two_gunicorn_workers_add_up_in_metrics(serve):
    server = serve(workers=2)

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

    status, text = get(f"{server.base}/metrics")
    assert status == 200
    assert sample_total(text, "db_connection_checkouts_total", alias="default") == sent
    assert sample_total(text, "db_connection_hold_seconds_count", alias="default") == sent
    assert sample_total(text, "db_request_checkouts_count", alias="default") == sent


def test_asgi_entry_runs_under_uvicorn_workers(serve):
    server = serve("-k", "uvicorn_worker.UvicornWorker", "project.asgi:application", workers=1)
    status, body = get(f"{server.base}/readyz")
    assert status == 200
    assert '"status": "ok"' in body
    status, text = get(f"{server.base}/metrics")
    assert sample_total(text, "db_connection_checkouts_total", alias="default") >= 1
