"""Real servers for tests: gunicorn with the project's config, on a free port."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import psycopg
from django.db import connections

from loadtests import site as launcher

ROOT = launcher.BASE_DIR


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url_for_tests() -> str:
    s = connections["default"].settings_dict
    password = f":{quote(s['PASSWORD'], safe='')}" if s["PASSWORD"] else ""
    return f"postgres://{s['USER']}{password}@{quote(s['HOST'], safe='')}:{s['PORT']}/{s['NAME']}"


def direct_connection(dbname: str | None = None) -> psycopg.Connection:
    """A connection of the test's own to the test database (or `dbname` on its server), outside every pool."""
    s = connections["default"].settings_dict
    return psycopg.connect(
        host=s["HOST"], port=s["PORT"], user=s["USER"], password=s["PASSWORD"] or None,
        dbname=dbname or s["NAME"], autocommit=True,
    )  # fmt: skip


def get(url: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


class Gunicorn(launcher.Gunicorn):
    """The site under gunicorn on the test database, on a free port, started at once."""

    def __init__(self, tmp_path: Path, *extra: str, workers: int = 2, env: dict | None = None) -> None:
        env = {
            "GUNICORN_WORKERS": str(workers),
            "GUNICORN_THREADS": "4",
            **(env or {}),
            "DATABASE_URL": database_url_for_tests(),
        }
        super().__init__(free_port(), tmp_path, env, *extra)
        self.base = self.url
        self.start()

    def wait_until_up(self, timeout: float = 30) -> None:
        try:
            self.wait_until_ready(timeout, path="/healthz")
        except launcher.StartError as error:
            raise AssertionError(str(error)) from None

    def output(self) -> str:
        return self.log()
