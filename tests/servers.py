"""Real servers for tests: gunicorn with the project's config, on a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

from django.db import connections

ROOT = Path(__file__).resolve().parent.parent


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
    def __init__(self, tmp_path: Path, *extra: str, workers: int = 2, env: dict | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.metrics_dir = tmp_path / f"metrics-{self.port}"
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "GUNICORN_WORKERS": str(workers),
            "GUNICORN_THREADS": "4",
            **(env or {}),
            "DATABASE_URL": database_url_for_tests(),
            "GUNICORN_BIND": f"127.0.0.1:{self.port}",
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
        }
        command = [sys.executable, "-m", "gunicorn", "-c", "project/gunicorn.conf.py", *extra]
        self.log = (tmp_path / f"gunicorn-{self.port}.log").open("w+")
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
