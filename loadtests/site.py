"""Start the sample site under gunicorn (for one side of a comparison, or a test), and stop it again.

Under WSGI or ASGI alike: project/gunicorn.conf.py picks gthread or uvicorn workers from SERVER.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

BASE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = BASE_DIR / "project" / "gunicorn.conf.py"


def cpu_used(before: float | None, after: float | None) -> float | None:
    """CPU seconds between two worker_cpu_seconds() readings; None if either is missing."""
    if before is None or after is None or after < before:
        return None
    return after - before


class StartError(RuntimeError):
    """The site could not be started; the message says why."""


@dataclass(frozen=True)
class SiteConfig:
    release: str  # "cursor" or "request"
    pool: str
    pool_size: int
    workers: int
    threads: int
    external_latency_ms: int
    server: str = "wsgi"  # "wsgi" (gthread workers) or "asgi" (uvicorn workers)


def ensure_port_free(port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise StartError(
                f"port {port} on 127.0.0.1 is taken ({exc.strerror}): stop what runs there, "
                "or choose another with --port"
            ) from None


class LogFile:
    """A process of ours whose output goes to `log_path`."""

    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except FileNotFoundError:
            return "(no log)"

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


class Gunicorn(LogFile):
    """gunicorn serving the shop with `config_file` (project/gunicorn.conf.py) on 127.0.0.1:`port`.

    The one launcher for the load tools and the tests: `env` is added to this
    process's environment (DB_RELEASE, pool sizes, GUNICORN_WORKERS, ...); the
    address and the metrics folder are set here. It runs in a session of its
    own, so stop() ends gunicorn and its workers together.
    """

    def __init__(
        self,
        port: int,
        workdir: Path,
        env: dict[str, str],
        *extra_args: str,
        name: str = "",
        config_file: Path = DEFAULT_CONFIG,
    ) -> None:
        self.port = port
        self.config_file = config_file
        self.url = f"http://127.0.0.1:{port}"
        self.metrics_dir = workdir / f"metrics-{port}"
        self.log_path = workdir / f"gunicorn-{name + '-' if name else ''}{port}.log"
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "project.settings",
            **env,
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
        }
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "gunicorn", "-c", str(self.config_file)]
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [*command, *self.extra_args],
                cwd=BASE_DIR,
                env=self.env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def wait_until_ready(self, timeout: float = 60, path: str = "/readyz") -> None:
        """Until `path` answers 200; StartError (with the log) if gunicorn exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StartError(f"gunicorn exited at start; its log:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}{path}", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.stop()
        raise StartError(f"the site on {self.url} was not ready within {timeout}s:\n{self.log_tail()}")

    def worker_cpu_seconds(self) -> float | None:
        """CPU time (user and system) the gunicorn workers have used so far; None if unreadable.

        A worker gunicorn replaced during the run still counts: the master's
        children_* times hold what its exited children used.
        """
        if self.process is None:
            return None
        try:
            master = psutil.Process(self.process.pid)
            exited = master.cpu_times()
            total = exited.children_user + exited.children_system
            for worker in master.children():
                times = worker.cpu_times()
                total += times.user + times.system
        except psutil.Error:  # gone
            return None
        return total

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


class Site(Gunicorn):
    """One side of a comparison: the shop with `config`, on 127.0.0.1:`port`, for a `with` block."""

    def __init__(
        self,
        config: SiteConfig,
        port: int,
        workdir: Path,
        extra_env: dict | None = None,
        name: str = "",
        gunicorn_config: Path = DEFAULT_CONFIG,
    ) -> None:
        env = {
            "DB_RELEASE": config.release,
            "DB_POOL": config.pool,
            "DB_POOL_MIN_SIZE": str(config.pool_size),
            "DB_POOL_MAX_SIZE": str(config.pool_size),
            "EXTERNAL_LATENCY_MS": str(config.external_latency_ms),
            "GUNICORN_WORKERS": str(config.workers),
            "GUNICORN_THREADS": str(config.threads),
            "SERVER": config.server,
            "DJANGO_LOG_LEVEL": "WARNING",
            **(extra_env or {}),
        }
        super().__init__(port, workdir, env, name=name or config.release, config_file=gunicorn_config)
        self.config = config

    def __enter__(self) -> Site:
        ensure_port_free(self.port)
        self.start()
        self.wait_until_ready()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
